"""Cross-entropy on probabilities and on logits, against optax, float64 NumPy and the post's example."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from handrolled import functional as F
from handrolled import losses as L

EXTREME = jnp.array([[1000.0, 0.0, -1000.0],
                     [1000.0, 0.0, -1000.0],
                     [-1000.0, 1000.0, 0.0]])
EXTREME_LABELS = jnp.array([2, 0, 1])


@pytest.fixture
def batch(rng):
    z = jnp.asarray((rng.standard_normal((128, 10)) * 3).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, 128))
    return z, y


def np_xent64(z, y):
    """Per-example logsumexp(z) - z_y in float64."""
    z = np.asarray(z, np.float64)
    m = z.max(-1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(-1))
    return lse - z[np.arange(len(z)), np.asarray(y)]


# ----------------------------------------------------------------------------- on logits

def test_sparse_logits_loss_matches_optax_and_float64(batch):
    z, y = batch
    ours = L.sparse_cross_entropy_with_logits(y, z, reduction="none")
    ref = optax.softmax_cross_entropy_with_integer_labels(z, y)
    # Same formula as optax (measured bitwise equal); 1e-6 leaves room for a different fusion.
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-6, atol=1e-6)
    # Against float64: measured 8.9e-7 per example (losses up to ~15), as docs/parity-semantics.md §2.
    np.testing.assert_allclose(np.asarray(ours), np_xent64(z, y), rtol=0, atol=5e-6)
    np.testing.assert_allclose(float(L.sparse_cross_entropy_with_logits(y, z)), np_xent64(z, y).mean(),
                               rtol=1e-6)


def test_onehot_logits_loss_matches_optax_and_sparse(batch):
    z, y = batch
    oh = F.one_hot(y, 10)
    ours = L.cross_entropy_with_logits(oh, z, reduction="none")
    np.testing.assert_allclose(np.asarray(ours), np.asarray(optax.softmax_cross_entropy(z, oh)),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ours),
                               np.asarray(L.sparse_cross_entropy_with_logits(y, z, reduction="none")),
                               rtol=1e-6, atol=1e-6)


def test_logits_loss_gradient_is_softmax_minus_onehot(batch):
    z, y = batch
    expected = (jax.nn.softmax(z) - jax.nn.one_hot(y, 10)) / len(y)  # d mean / dz
    for loss in (lambda z: L.sparse_cross_entropy_with_logits(y, z),
                 lambda z: L.cross_entropy_with_logits(F.one_hot(y, 10), z)):
        # float32 rounding of softmax entries <= 1, divided by 128: ~1e-9 (atol 1e-8 to be safe).
        np.testing.assert_allclose(np.asarray(jax.grad(loss)(z)), np.asarray(expected), rtol=1e-5, atol=1e-8)


def test_logits_losses_exact_at_1000():
    per = L.sparse_cross_entropy_with_logits(EXTREME_LABELS, EXTREME, reduction="none")
    np.testing.assert_array_equal(np.asarray(per), [2000.0, 0.0, 0.0])  # exact, as TF's fused op
    per_oh = L.cross_entropy_with_logits(F.one_hot(EXTREME_LABELS, 3), EXTREME, reduction="none")
    np.testing.assert_array_equal(np.asarray(per_oh), [2000.0, 0.0, 0.0])
    np.testing.assert_array_equal(np.asarray(per),
                                  np.asarray(optax.softmax_cross_entropy_with_integer_labels(EXTREME, EXTREME_LABELS)))
    for loss in (lambda z: L.sparse_cross_entropy_with_logits(EXTREME_LABELS, z),
                 lambda z: L.cross_entropy_with_logits(F.one_hot(EXTREME_LABELS, 3), z)):
        g = np.asarray(jax.grad(loss)(EXTREME))
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g[0], np.array([1, 0, -1]) / 3, atol=1e-7)  # softmax - onehot, /batch


def test_reductions(batch):
    z, y = batch
    per = L.sparse_cross_entropy_with_logits(y, z, reduction="none")
    assert per.shape == (128,)
    np.testing.assert_allclose(float(L.sparse_cross_entropy_with_logits(y, z, reduction="sum")),
                               float(per.sum()), rtol=1e-6)
    np.testing.assert_allclose(float(L.sparse_cross_entropy_with_logits(y, z)), float(per.mean()), rtol=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        L.sparse_cross_entropy_with_logits(y, z, reduction="max")


# ----------------------------------------------------------------------------- on probabilities

def test_probability_losses_post_example():
    # The post's check against Keras's CategoricalCrossentropy: -(log .95 + log .1) / 2 = 1.17695.
    # NumPy inputs (float64, int64), as in the post, must work too.
    y_true = np.array([[0, 1, 0], [0, 0, 1]])
    y_pred = np.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
    expected = -(np.log(0.95) + np.log(0.1)) / 2
    np.testing.assert_allclose(float(L.cross_entropy(y_true, y_pred)), expected, rtol=1e-6)
    np.testing.assert_allclose(float(L.sparse_cross_entropy(np.array([1, 2]), y_pred)), expected, rtol=1e-6)


def test_probability_losses_match_logit_losses_when_unclipped(batch):
    z, y = batch
    p = jax.nn.softmax(z)
    assert float(p[jnp.arange(len(y)), y].min()) > L.PROB_EPS  # no label's probability is clipped
    ref = L.sparse_cross_entropy_with_logits(y, z, reduction="none")
    # log(softmax) vs log_softmax in float32: relative error of p ~ 1e-7 becomes ~1e-7 absolute in
    # log p, plus rounding of the loss itself (up to ~14, ulp 9.5e-7); measured 9.5e-7.
    np.testing.assert_allclose(np.asarray(L.sparse_cross_entropy(y, p, reduction="none")), np.asarray(ref),
                               rtol=1e-6, atol=5e-6)
    np.testing.assert_allclose(np.asarray(L.cross_entropy(F.one_hot(y, 10), p, reduction="none")),
                               np.asarray(ref), rtol=1e-6, atol=5e-6)


def test_probability_zero_is_safe():
    probs = jnp.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    labels = jnp.array([1, 0])
    per = np.asarray(L.sparse_cross_entropy(labels, probs, reduction="none"))
    cap = -np.log(np.float32(L.PROB_EPS))  # 16.118: the loss of a probability clipped to eps
    np.testing.assert_allclose(per, [cap, np.log(2)], rtol=1e-6)
    per_oh = np.asarray(L.cross_entropy(F.one_hot(labels, 3), probs, reduction="none"))
    np.testing.assert_allclose(per_oh, per, rtol=1e-6)
    for loss in (lambda p: L.sparse_cross_entropy(labels, p), lambda p: L.cross_entropy(F.one_hot(labels, 3), p)):
        g = np.asarray(jax.grad(loss)(probs))
        assert np.isfinite(g).all()
        assert g[0, 1] == 0.0  # a clipped probability gets no gradient (as Keras), not 1/eps
        np.testing.assert_allclose(g[1, 0], -1 / (2 * 0.5), rtol=1e-6)  # d(-log p / 2)/dp at p = .5
    # A perfect prediction scores exactly 0 (not clipped at 1 - eps).
    assert float(L.sparse_cross_entropy(jnp.array([0]), jnp.array([[1.0, 0.0]]))) == 0.0


def test_probability_losses_of_softmax_at_1000_are_capped_not_nan():
    p = F.softmax(EXTREME)  # [1, 0, 0] rows: the true class of row 0 underflowed to exactly 0
    per = np.asarray(L.sparse_cross_entropy(EXTREME_LABELS, p, reduction="none"))
    assert np.isfinite(per).all()
    np.testing.assert_allclose(per, [-np.log(np.float32(L.PROB_EPS)), 0.0, 0.0], rtol=1e-6)


def test_post_float64_eps_did_not_protect_float32():
    # Documents the bug fixed in PROB_EPS: adding float64 eps (2.2e-16) is a no-op in float32
    # for p > ~3.7e-9, and at p == 0 it gives a gradient of 1/2.2e-16 = 4.5e15.
    eps64 = float(np.finfo(np.float64).eps)
    p = jnp.float32(1e-6)
    assert p + eps64 == p
    g = jax.grad(lambda p: -jnp.log(p + eps64))(jnp.float32(0.0))
    assert abs(float(g)) > 1e15
    assert float(jax.grad(lambda p: L.sparse_cross_entropy(jnp.array([0]), p))(jnp.zeros((1, 2)))[0, 0]) == 0.0


# ----------------------------------------------------------------------------- metrics

def test_num_correct_and_accuracy():
    out = jnp.array([[0.1, 0.9], [2.0, -1.0], [0.0, 3.0], [5.0, 5.1]])
    y = jnp.array([1, 0, 0, 1])
    assert int(L.num_correct(y, out)) == 3
    assert L.num_correct(y, out).dtype == jnp.int32
    np.testing.assert_allclose(float(L.accuracy(y, out)), 0.75)
    # Softmax preserves the argmax, so probabilities and logits give the same count.
    assert int(L.num_correct(y, F.softmax(out))) == 3
