"""relu, softmax and log-softmax in the three implementations, including extreme logits (+-1000).

Implementations: `handrolled.functional` (relu, softmax, log_softmax); Flax's `nn.relu`,
`nn.softmax`, `nn.log_softmax` (which are jax.nn's) and NNX's `nnx.relu`, `nnx.softmax`,
`nnx.log_softmax` (the same functions re-exported); Keras's `keras.activations.relu/softmax` and
`keras.ops.log_softmax` on the TensorFlow backend. Truth: float64 NumPy with the max shift.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import float64_reference as ref
from parity import COMPARISONS, HAVE_TF, SINGLE, check, keras_modules, max_abs_diff
import handrolled.functional as hf


def logits_cases():
    """4096 rows of N(0, 3) logits, then rows a float32 `exp` cannot take unshifted (exp(88.8) = inf)."""
    rng = np.random.default_rng(0)
    ordinary = rng.normal(0, 3, (4096, 10))
    extreme = np.zeros((6, 10))
    extreme[0, :3] = [1000, 0, -1000]
    extreme[1, :3] = [-1000, 0, 1000]
    extreme[2] = 1000                        # all equal and huge: uniform 0.1
    extreme[3] = -1000                       # all equal and hugely negative: uniform 0.1
    extreme[4, :2] = [1000, 1000]            # a tie at the top: 0.5, 0.5
    extreme[5] = np.linspace(-1000, 1000, 10)
    return np.concatenate([ordinary, extreme]).astype(np.float32)


LOGITS = logits_cases()
N_ORDINARY = 4096


@functools.cache
def activations(impl: str) -> dict[str, np.ndarray]:
    """{"relu", "softmax", "log_softmax"} of LOGITS, and "relu_grad" (d relu / dx) on RELU_X."""
    z = LOGITS
    if impl == "float64":
        return {"relu": ref.relu(ref.f64(z)), "softmax": ref.softmax(z), "log_softmax": ref.log_softmax(z),
                "relu_grad": (RELU_X > 0).astype(np.float64)}
    if impl in ("handrolled", "flax", "nnx"):
        f = {"handrolled": hf, "flax": nn, "nnx": nnx}[impl]
        out = {name: np.asarray(jax.jit(getattr(f, name))(z)) for name in ("relu", "softmax", "log_softmax")}
        out["relu_grad"] = np.asarray(jax.vmap(jax.grad(f.relu))(jnp.asarray(RELU_X)))
        return out
    K = keras_modules()
    keras, tf = K.keras, K.tf
    out = {"relu": np.asarray(keras.activations.relu(z)), "softmax": np.asarray(keras.activations.softmax(z)),
           "log_softmax": np.asarray(keras.ops.log_softmax(z))}
    x = tf.constant(RELU_X)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(keras.activations.relu(x))
    out["relu_grad"] = np.asarray(tape.gradient(y, x))
    return out


RELU_X = np.array([-1000, -1, -1e-30, -0.0, 0.0, 1e-30, 1, 1000], np.float32)


@pytest.mark.parametrize("a, b", COMPARISONS)
def test_relu(a, b):
    # max(x, 0) selects a value: exact, including at +-1000 and at the denormal 1e-30.
    check(f"relu {a} vs {b}", max_abs_diff(activations(a)["relu"], activations(b)["relu"]), 0.0)
    # Derivative 0 at x == 0 everywhere (jnp.clip's own derivative would be 0.5 there; see
    # handrolled.functional.relu): with zero biases a blank image patch gives exactly 0.
    check(f"relu' {a} vs {b}", max_abs_diff(activations(a)["relu_grad"], activations(b)["relu_grad"]), 0.0)


@pytest.mark.parametrize("a, b", COMPARISONS)
def test_softmax(a, b):
    got, want = activations(a)["softmax"], activations(b)["softmax"]
    assert np.all(np.isfinite(got)) and np.all(np.isfinite(want))
    # p = exp(z - m) / sum: the rounding of z - m (|z - m| up to ~25) goes through exp as a relative
    # error of up to |z - m| * 6e-8, then exp, the 10-term sum and the division add an ulp or so each.
    # Measured: 2.1e-7 absolute (JAX and Keras vs float64; 1.8e-7 JAX vs Keras), i.e. ~3.5 ulps of
    # p in [0.5, 1) and 1.1e-6 relative on tiny p. Asserted 5e-7 = 8 ulps at p in [0.5, 1).
    check(f"softmax {a} vs {b}", max_abs_diff(got, want), 5e-7)


def test_softmax_extreme_rows_exactly():
    """The rows at +-1000 have exact answers, which every implementation returns."""
    want = ref.softmax(LOGITS[N_ORDINARY:])
    assert want[0, 0] == 1.0 and want[1, 2] == 1.0 and np.allclose(want[2], 0.1) and np.allclose(want[4, :2], 0.5)
    for impl in ("handrolled", "flax", "nnx") + (("keras",) if HAVE_TF else ()):
        got = activations(impl)["softmax"][N_ORDINARY:]
        np.testing.assert_allclose(got, want, rtol=0, atol=6e-8, err_msg=impl)  # half an ulp at 1


def test_naive_softmax_would_be_caught():
    """Without the max shift, exp(1000) overflows: [1000, 0, -1000] gives [nan, 0, 0], which the
    finiteness check in test_softmax rejects."""
    z = jnp.asarray(LOGITS[N_ORDINARY:])
    naive = jnp.exp(z) / jnp.sum(jnp.exp(z), axis=-1, keepdims=True)
    assert np.isnan(np.asarray(naive)[0, 0])


@pytest.mark.parametrize("a, b", COMPARISONS)
def test_log_softmax(a, b):
    got, want = activations(a)["log_softmax"], activations(b)["log_softmax"]
    assert np.all(np.isfinite(got)), "log_softmax must be finite for finite logits (no log(0))"
    # (z - m) - log(sum exp(z - m)): values down to -2000, where float32's ulp is 1.2e-4, so the
    # difference is measured in units of ulp(|value|) + ulp(1) (the subtraction rounds to the first,
    # the log of a sum near 1 to the second). Measured: 1.64 (JAX vs float64), 1.53 (Keras vs
    # float64), 1.92 (JAX vs Keras), all on the N(0, 3) rows; 0.5 on the +-1000 rows. Asserted 4 units.
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    unit = (np.spacing(np.abs(np.asarray(want, np.float32))) + np.spacing(np.float32(1))).astype(np.float64)
    check(f"log_softmax {a} vs {b} (in ulp(value) + ulp(1))", float((diff / unit).max()), 4.0)


@pytest.mark.parametrize("impl", SINGLE)
def test_log_softmax_at_1000_is_exact(impl):
    """log softmax([1000, 0, -1000]) = [0, -1000, -2000] exactly; log(softmax) would give -inf."""
    got = activations(impl)["log_softmax"][N_ORDINARY]
    np.testing.assert_array_equal(got[:3], [0.0, -1000.0, -2000.0])
