"""Cross-entropy, sparse and one-hot, from logits and from probabilities, in the three implementations.

From logits: hand-rolled `sparse_cross_entropy_with_logits` / `cross_entropy_with_logits`, optax's
`softmax_cross_entropy_with_integer_labels` / `softmax_cross_entropy` (what the Flax linen and NNX
training steps use, so "flax" and "nnx" run the same functions), Keras's `SparseCategoricalCrossentropy`
/ `CategoricalCrossentropy(from_logits=True)`. All three are stable for any finite logits and never
clip: they agree with the float64 reference, values and gradients, even at logits of +-1000.

From probabilities (Flax/optax has no such loss): hand-rolled `sparse_cross_entropy` /
`cross_entropy` clip p to [1e-7, 1] and do not renormalise; Keras (`from_logits=False`, when it cannot
recover logits, e.g. from a NumPy array) clips to [1e-7, 1 - 1e-7] and renormalises. They agree where
nothing is clipped, both cap a confidently wrong sample at -log(1e-7) = 16.118 with ZERO gradient,
and they differ, as documented, on a perfect prediction and on unnormalised input.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import float64_reference as ref
import handrolled.losses as hl
from handrolled.functional import one_hot, softmax
from parity import COMPARISONS, HAVE_TF, SINGLE, check, keras_modules, max_abs_diff, needs_keras

CAP = -np.log(1e-7)  # 16.11809565: the largest loss a probability clipped at 1e-7 can give


def logits_and_labels():
    """4096 rows of N(0, 3) logits with random labels, then six rows at +-1000 with known losses."""
    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, (4096, 10))
    y = rng.integers(0, 10, 4096)
    extreme = np.zeros((6, 10))
    extreme[0, :3] = [1000, 0, -1000]      # label 2: loss 2000, gradient [1, 0, -1, 0...] / N
    extreme[1, :3] = [-1000, 0, 1000]      # label 0: loss 2000
    extreme[2] = 1000                      # label 5: loss log 10
    extreme[3] = -1000                     # label 9: loss log 10
    extreme[4, :2] = [1000, 1000]          # label 1: loss log 2
    extreme[5, 0] = 1000                   # label 0: loss 0 (every other logit 0)
    z = np.concatenate([z, extreme]).astype(np.float32)
    y = np.concatenate([y, [2, 0, 5, 9, 1, 0]]).astype(np.int32)
    return z, y


Z, Y = logits_and_labels()
EXPECTED_EXTREME = np.array([2000, 2000, np.log(10), np.log(10), np.log(2), 0.0])


@functools.cache
def logit_losses(impl: str) -> dict[str, np.ndarray]:
    """Per-example sparse and one-hot losses, the batch means, and d(mean sparse loss)/d logits."""
    onehot = np.eye(10, dtype=np.float32)[Y]
    if impl == "float64":
        per = ref.sparse_xent_logits(Y, Z)
        return {"sparse": per, "onehot": per, "sparse_mean": per.mean(), "onehot_mean": per.mean(),
                "grad": ref.sparse_xent_logits_grad(Y, Z)}
    if impl in ("handrolled", "flax", "nnx"):
        if impl == "handrolled":
            sparse = lambda z: hl.sparse_cross_entropy_with_logits(Y, z, reduction="none")  # noqa: E731
            dense = lambda z: hl.cross_entropy_with_logits(onehot, z, reduction="none")  # noqa: E731
        else:
            sparse = lambda z: optax.softmax_cross_entropy_with_integer_labels(z, Y)  # noqa: E731
            dense = lambda z: optax.softmax_cross_entropy(z, onehot)  # noqa: E731
        s, d = np.asarray(jax.jit(sparse)(Z)), np.asarray(jax.jit(dense)(Z))
        return {"sparse": s, "onehot": d,
                "sparse_mean": float(jax.jit(lambda z: sparse(z).mean())(Z)),
                "onehot_mean": float(jax.jit(lambda z: dense(z).mean())(Z)),
                "grad": np.asarray(jax.jit(jax.grad(lambda z: sparse(z).mean()))(Z))}
    K = keras_modules()
    keras, tf = K.keras, K.tf
    scce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    cce = keras.losses.CategoricalCrossentropy(from_logits=True, reduction=None)
    z = tf.constant(Z)
    with tf.GradientTape() as tape:
        tape.watch(z)
        mean = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(Y, z)  # "sum_over_batch_size"
    return {"sparse": np.asarray(scce(Y, Z)), "onehot": np.asarray(cce(onehot, Z)),
            "sparse_mean": float(mean),
            "onehot_mean": float(keras.losses.CategoricalCrossentropy(from_logits=True)(onehot, Z)),
            "grad": np.asarray(tape.gradient(mean, z))}


def loss_units(got, want):
    """max |got - want| / (ulp(|want|) + ulp(max_j |z_j|)), row by row.

    The natural unit for a loss computed from logits: the result is rounded to its own ulp, and the
    form logsumexp(z) - z_y (optax, and the hand-rolled sparse loss) first builds a number of size
    max|z| and then cancels it, which costs up to half an ulp of max|z| (3e-5 at |z| = 1000).
    """
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    unit = (np.spacing(np.abs(want).astype(np.float32)) + np.spacing(np.abs(Z).max(axis=1))).astype(np.float64)
    return float((np.abs(got - want) / unit).max())


@pytest.mark.parametrize("kind", ["sparse", "onehot"])
@pytest.mark.parametrize("a, b", COMPARISONS)
def test_loss_from_logits(a, b, kind):
    la, lb = logit_losses(a), logit_losses(b)
    assert np.all(np.isfinite(la[kind])), "a loss from finite logits must be finite (max shift missing?)"
    # Measured in ulp(loss) + ulp(max|z|) (see loss_units), over the N(0, 3) rows and the +-1000 rows:
    # at most 1.33 units (hand-rolled/optax sparse vs Keras), 0.75-0.83 against float64; 0.45 units on the +-1000 rows (2.7e-5 absolute: JAX's logsumexp(z) - z_y cancellation, see
    # test_loss_from_logits_at_1000). Asserted: 3 units. A wrong label or a dropped term is O(1).
    check(f"{kind} loss from logits per example {a} vs {b} (units)", loss_units(la[kind], lb[kind]), 3.0)
    # The batch mean (6.03) of 4102 float32 values: measured 4.8e-7 (JAX vs Keras); asserted 2e-6
    # (4 ulps of 6.03; the summation of 4102 terms rounds at every add).
    check(f"{kind} loss from logits, batch mean {a} vs {b}", abs(la[f"{kind}_mean"] - lb[f"{kind}_mean"]), 2e-6)


@pytest.mark.parametrize("impl", SINGLE)
def test_loss_from_logits_at_1000(impl):
    """[1000, 0, -1000] with label 2 costs exactly 2000 everywhere, sparse and one-hot.

    Documented difference on the other extreme rows (all logits 1000: loss log 10; [1000, 1000]:
    log 2): Keras (TF's fused op shifts by the max before anything else) and every one-hot form
    (through log_softmax) are within an ulp of the exact value; the sparse form of optax and of the
    hand-rolled loss, logsumexp(z) - z_y, computes 1000 + log 10 first and subtracts 1000, so it is
    off by up to half an ulp of 1000: 2.3026123 instead of 2.3025851 (2.7e-5).
    """
    exact_sparse = impl == "keras"
    for kind in ("sparse", "onehot"):
        got = logit_losses(impl)[kind][-6:]
        np.testing.assert_array_equal(got[:2], [2000.0, 2000.0])
        np.testing.assert_array_equal(got[5], 0.0)
        if kind == "onehot" or exact_sparse:
            # log 10 and log 2 in float32: within an ulp of the exact value (ulp(2.3) = 2.4e-7).
            np.testing.assert_allclose(got[2:5], EXPECTED_EXTREME[2:5], rtol=0, atol=2.4e-7)
        else:
            err = np.abs(got[2:5] - EXPECTED_EXTREME[2:5])
            assert np.all(err <= np.spacing(np.float32(1000)) / 2), err  # half an ulp of 1000 = 3.05e-5
            assert err.max() > 1e-5  # ... and really that much: the documented loss of precision


@pytest.mark.parametrize("a, b", COMPARISONS)
def test_loss_gradient_wrt_logits(a, b):
    """d mean(loss) / dz = (softmax(z) - onehot(y)) / N, also on the +-1000 rows ([1, 0, -1] / N)."""
    ga, gb = logit_losses(a)["grad"], logit_losses(b)["grad"]
    n = len(Z)
    # Entries are (p - y) / N with N = 4102: |g| <= 2.4e-4, ulp there 1.5e-11. Measured 5.8e-11
    # (softmax's few-ulp error, divided by N); asserted 2e-10 (= 8e-7 before dividing by N,
    # comparable to the softmax tolerance).
    check(f"d loss / d logits {a} vs {b}", max_abs_diff(ga, gb), 2e-10)
    np.testing.assert_allclose(ga[-6] * n, [1, 0, -1, 0, 0, 0, 0, 0, 0, 0], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- from probabilities

PROB_IMPLS = ["handrolled", pytest.param("keras", marks=needs_keras)]


def probability_rows():
    """Softmax of N(0, 1) logits: every probability lies in [1e-7, 1 - 1e-7], so nothing is clipped."""
    rng = np.random.default_rng(2)
    p = ref.softmax(rng.normal(0, 1, (1024, 10))).astype(np.float32)
    y = rng.integers(0, 10, 1024).astype(np.int32)
    assert p.min() > 1e-7 and p.max() < 1 - 1e-7
    return p, y


P, PY = probability_rows()


@functools.cache
def prob_losses(impl: str, kind: str, probs_key: str) -> np.ndarray:
    """Per-example loss of probabilities PROBS[probs_key] with labels, in `impl`."""
    p, y = PROBS[probs_key]
    onehot = np.eye(p.shape[1], dtype=np.float32)[y]
    if impl == "float64":
        return -np.log(np.take_along_axis(ref.f64(p), y[:, None], axis=1)[:, 0])
    if impl == "handrolled":
        if kind == "sparse":
            return np.asarray(hl.sparse_cross_entropy(y, jnp.asarray(p), reduction="none"))
        return np.asarray(hl.cross_entropy(onehot, jnp.asarray(p), reduction="none"))
    keras = keras_modules().keras
    if kind == "sparse":
        return np.asarray(keras.losses.SparseCategoricalCrossentropy(reduction=None)(y, p))
    return np.asarray(keras.losses.CategoricalCrossentropy(reduction=None)(onehot, p))


PROBS = {
    "unclipped": (P, PY),
    # Confidently wrong: softmax([1000, 0, -1000]) = [1, 0, 0] with label 2; p_y underflowed to 0.
    "confidently_wrong": (np.array([[1, 0, 0]], np.float32), np.array([2], np.int32)),
    # Perfect: p_y = 1 exactly.
    "perfect": (np.array([[1, 0, 0]], np.float32), np.array([0], np.int32)),
    # Not a distribution: sums to 0.6.
    "unnormalised": (np.array([[0.2, 0.2, 0.2]], np.float32), np.array([0], np.int32)),
}


@pytest.mark.parametrize("kind", ["sparse", "onehot"])
@pytest.mark.parametrize("a, b", [pytest.param("handrolled", "float64", id="handrolled-vs-float64"),
                                  pytest.param("keras", "float64", id="keras-vs-float64", marks=needs_keras),
                                  pytest.param("handrolled", "keras", id="handrolled-vs-keras", marks=needs_keras)])
def test_loss_from_probabilities_agrees_where_nothing_is_clipped(a, b, kind):
    # -log(p_y), |loss| <= 8: one log (an ulp of the result, <= 9.5e-7), plus Keras's renormalisation
    # by sum(p) = 1 +- 3e-7. Measured 5.9e-7 (Keras vs float64), 2.3e-7 (hand-rolled), 4.8e-7 (the pair);
    # asserted 1.5e-6.
    diff = max_abs_diff(prob_losses(a, kind, "unclipped"), prob_losses(b, kind, "unclipped"))
    check(f"{kind} loss from probabilities (unclipped) {a} vs {b}", diff, 1.5e-6)


def keras_prob_loss_and_grad(kind: str, probs_key: str):
    """Keras's loss on plain (NumPy-made) probabilities, and its gradient w.r.t. those probabilities."""
    K = keras_modules()
    p, y = PROBS[probs_key]
    loss_fn = (K.keras.losses.SparseCategoricalCrossentropy() if kind == "sparse"
               else K.keras.losses.CategoricalCrossentropy())
    target = y if kind == "sparse" else np.eye(p.shape[1], dtype=np.float32)[y]
    pt = K.tf.constant(p)
    with K.tf.GradientTape() as tape:
        tape.watch(pt)
        loss = loss_fn(target, pt)
    return float(loss), np.asarray(tape.gradient(loss, pt))


def handrolled_prob_loss_and_grad(kind: str, probs_key: str):
    p, y = PROBS[probs_key]
    if kind == "sparse":
        f = lambda p: hl.sparse_cross_entropy(y, p)  # noqa: E731
    else:
        f = lambda p: hl.cross_entropy(np.eye(p.shape[1], dtype=np.float32)[y], p)  # noqa: E731
    loss, grad = jax.value_and_grad(f)(jnp.asarray(p))
    return float(loss), np.asarray(grad)


PROB_LOSS_AND_GRAD = {"handrolled": handrolled_prob_loss_and_grad,
                      "keras": lambda kind, key: keras_prob_loss_and_grad(kind, key)}


@pytest.mark.parametrize("kind", ["sparse", "onehot"])
@pytest.mark.parametrize("impl", PROB_IMPLS)
def test_confidently_wrong_probability_is_capped_with_zero_gradient(impl, kind):
    """p = [1, 0, 0] for label 2 (what softmax([1000, 0, -1000]) gives): p_y = 0 is clipped to 1e-7,
    so the loss is capped at -log(1e-7) = 16.118 (the true loss, from logits, is 2000) and the
    gradient is ZERO: the clip cuts it off, so training would never correct this sample."""
    loss, grad = PROB_LOSS_AND_GRAD[impl](kind, "confidently_wrong")
    # -log(float32(1e-7)) in float32: within an ulp of 16.118 (ulp(16) = 1.9e-6).
    assert abs(loss - CAP) <= 1.9e-6, loss
    np.testing.assert_array_equal(grad, np.zeros_like(grad))


@pytest.mark.parametrize("kind", ["sparse", "onehot"])
@needs_keras
def test_keras_and_handrolled_cap_the_same(kind):
    """Both implementations cap at the same float32 value (measured |diff| 0, sparse and one-hot)."""
    keras_loss, _ = keras_prob_loss_and_grad(kind, "confidently_wrong")
    hand_loss, _ = handrolled_prob_loss_and_grad(kind, "confidently_wrong")
    check(f"{kind} capped loss handrolled vs keras", abs(keras_loss - hand_loss), 1.9e-6)  # one ulp of 16


@pytest.mark.parametrize("kind", ["sparse", "onehot"])
def test_documented_difference_perfect_prediction(kind):
    """Hand-rolled clips only from below, so p_y = 1 costs exactly 0. Keras also clips at 1 - 1e-7
    (and renormalises), so a perfect prediction costs a little: -log(1 - 1e-7) ~ 1.2e-7 (float32)."""
    hand, _ = handrolled_prob_loss_and_grad(kind, "perfect")
    assert hand == 0.0
    if not HAVE_TF:
        pytest.skip("TensorFlow is not installed: the Keras half of this difference is not shown")
    keras_loss, _ = keras_prob_loss_and_grad(kind, "perfect")
    assert 0.0 < keras_loss < 1e-6, keras_loss


@pytest.mark.parametrize("kind", ["sparse", "onehot"])
def test_documented_difference_unnormalised_probabilities(kind):
    """[0.2, 0.2, 0.2], label 0: Keras renormalises to 1/3 each (loss log 3 = 1.0986); the
    hand-rolled loss takes the probabilities as given (loss -log 0.2 = log 5 = 1.6094)."""
    hand, _ = handrolled_prob_loss_and_grad(kind, "unnormalised")
    assert abs(hand - np.log(5)) <= 2.4e-7  # an ulp of 1.6
    if not HAVE_TF:
        pytest.skip("TensorFlow is not installed: the Keras half of this difference is not shown")
    keras_loss, _ = keras_prob_loss_and_grad(kind, "unnormalised")
    assert abs(keras_loss - np.log(3)) <= 2.4e-7  # an ulp of 1.1 is 1.2e-7; two roundings


@needs_keras
def test_keras_recovers_logits_from_its_own_softmax():
    """`from_logits=False` clips only when Keras cannot find the logits. On the output of
    `keras.activations.softmax` it recovers them and computes the exact, stable loss: 2000 (not
    16.118) for [1000, 0, -1000] with label 2, and the gradient softmax - onehot = [1, 0, -1]
    (not 0). The same probabilities copied to NumPy lose the logits and are clipped."""
    K = keras_modules()
    keras, tf = K.keras, K.tf
    z = tf.constant([[1000.0, 0.0, -1000.0]])
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    with tf.GradientTape() as tape:
        tape.watch(z)
        probs = keras.activations.softmax(z)
        loss = loss_fn(np.array([2]), probs)
    assert float(loss) == 2000.0
    np.testing.assert_array_equal(np.asarray(tape.gradient(loss, z)), [[1.0, 0.0, -1.0]])
    assert abs(float(loss_fn(np.array([2]), np.asarray(probs))) - CAP) <= 1.9e-6


def test_handrolled_probability_loss_of_softmax_has_zero_gradient_but_logit_loss_does_not():
    """The hand-rolled equivalent: through softmax + the probability loss, the gradient w.r.t. the
    logits of a confidently wrong sample is 0 (capped at 16.118); the logit loss gives 2000 and
    [1, 0, -1] (which test_loss_gradient_wrt_logits compares across all three)."""
    z = jnp.array([[1000.0, 0.0, -1000.0]])
    y = jnp.array([2])
    prob_loss, prob_grad = jax.value_and_grad(lambda z: hl.sparse_cross_entropy(y, softmax(z)))(z)
    logit_loss, logit_grad = jax.value_and_grad(lambda z: hl.sparse_cross_entropy_with_logits(y, z))(z)
    assert abs(float(prob_loss) - CAP) <= 1.9e-6 and float(logit_loss) == 2000.0
    np.testing.assert_array_equal(np.asarray(prob_grad), [[0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(np.asarray(logit_grad), [[1.0, 0.0, -1.0]])
    # and the one-hot form agrees with the sparse one
    assert float(hl.cross_entropy_with_logits(one_hot(y, 3), z)) == 2000.0
