"""relu, softmax, log_softmax, logsumexp, rescale_image, flatten, one_hot against jax.nn and NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from handrolled import functional as F

EXTREME = jnp.array([[1000.0, 0.0, -1000.0],
                     [-1000.0, -1000.0, -1000.0],
                     [1000.0, 1000.0, 0.0],
                     [0.0, 0.0, 0.0]])

# Our softmax/log_softmax/logsumexp use the same shifted formulas as jax.nn and were measured
# bitwise equal to it on N(0, 3) logits; rtol 1e-6 leaves room for 1-2 ulp of a different fusion.
RTOL, ATOL = 1e-6, 1e-7


@pytest.fixture
def logits(rng):
    return jnp.asarray((rng.standard_normal((64, 10)) * 3).astype(np.float32))


def test_relu_values_and_gradient():
    x = jnp.array([-2.0, -0.0, 0.0, 1e-30, 3.0])
    np.testing.assert_array_equal(np.asarray(F.relu(x)), np.float32([0, 0, 0, 1e-30, 3]))
    # Gradient 0 at exactly 0 (as jax.nn.relu / tf.nn.relu); clip's own derivative there is 0.5.
    grad = jax.vmap(jax.grad(F.relu))(x)
    np.testing.assert_array_equal(np.asarray(grad), [0, 0, 0, 1, 1])
    assert float(jax.grad(lambda x: jnp.clip(x, min=0.0))(0.0)) == 0.5  # the reason for custom_jvp


def test_relu_matches_jax_nn_including_exact_zeros(rng):
    x = rng.standard_normal((50, 7)).astype(np.float32)
    x[rng.random(x.shape) < 0.3] = 0.0  # blank-patch pre-activations are exactly 0
    x = jnp.asarray(x)
    ct = jnp.asarray(rng.standard_normal(x.shape).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(F.relu(x)), np.asarray(jax.nn.relu(x)))
    g_ours = jax.grad(lambda x: jnp.vdot(ct, F.relu(x)))(x)
    g_ref = jax.grad(lambda x: jnp.vdot(ct, jax.nn.relu(x)))(x)
    np.testing.assert_array_equal(np.asarray(g_ours), np.asarray(g_ref))
    assert F.relu(jnp.array([np.nan]))[0] != F.relu(jnp.array([np.nan]))[0]  # nan propagates


def test_softmax_matches_jax_nn(logits):
    p = F.softmax(logits)
    np.testing.assert_allclose(np.asarray(p), np.asarray(jax.nn.softmax(logits)), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(p.sum(-1)), 1.0, rtol=1e-6)  # float32 sum of 10 terms


def test_log_softmax_and_logsumexp_match_jax_nn(logits):
    np.testing.assert_allclose(np.asarray(F.log_softmax(logits)), np.asarray(jax.nn.log_softmax(logits)),
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(F.logsumexp(logits)),
                               np.asarray(jax.nn.logsumexp(logits, axis=-1)), rtol=RTOL, atol=ATOL)
    assert F.logsumexp(logits, keepdims=True).shape == (64, 1)


def test_softmax_gradients_match_jax_nn(rng, logits):
    ct = jnp.asarray(rng.standard_normal(logits.shape).astype(np.float32))
    for ours, ref in [(F.softmax, jax.nn.softmax), (F.log_softmax, jax.nn.log_softmax)]:
        g_ours = jax.grad(lambda z: jnp.vdot(ct, ours(z)))(logits)
        g_ref = jax.grad(lambda z: jnp.vdot(ct, ref(z)))(logits)
        # Same math; jax.nn uses a custom JVP, we rely on stop_gradient: float32 rounding only.
        np.testing.assert_allclose(np.asarray(g_ours), np.asarray(g_ref), rtol=1e-5, atol=1e-6)


def test_softmax_is_finite_at_logits_of_1000():
    naive = jnp.exp(EXTREME) / jnp.exp(EXTREME).sum(-1, keepdims=True)
    assert np.isnan(np.asarray(naive)).any()  # the post's formula: exp(1000) = inf, inf/inf = nan
    p = F.softmax(EXTREME)
    assert np.isfinite(np.asarray(p)).all()
    np.testing.assert_allclose(np.asarray(p), np.asarray(jax.nn.softmax(EXTREME)), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(p[0]), [1, 0, 0])
    np.testing.assert_allclose(np.asarray(p[2]), [0.5, 0.5, 0])


def test_log_softmax_is_exact_at_logits_of_1000():
    ls = np.asarray(F.log_softmax(EXTREME))
    assert np.isfinite(ls).all()
    np.testing.assert_array_equal(ls[0], [0.0, -1000.0, -2000.0])  # exact: z - max, then log(1) = 0
    np.testing.assert_allclose(ls, np.asarray(jax.nn.log_softmax(EXTREME)), rtol=RTOL, atol=ATOL)
    lse = np.asarray(F.logsumexp(EXTREME))
    np.testing.assert_allclose(lse, [1000.0, -1000 + np.log(3), 1000 + np.log(2), np.log(3)], rtol=1e-6)
    grads = jax.grad(lambda z: F.logsumexp(z).sum())(EXTREME)
    np.testing.assert_allclose(np.asarray(grads), np.asarray(F.softmax(EXTREME)), rtol=1e-6, atol=1e-7)


def test_rescale_image():
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    y = F.rescale_image(x)
    assert y.dtype == jnp.float32
    # float32 x/255 (XLA may use x * (1/255)): within 1 ulp of the exact quotient, ulp(1) = 1.2e-7.
    np.testing.assert_allclose(np.asarray(y), x / 255.0, rtol=0, atol=1.2e-7)
    assert float(y.min()) == 0.0 and float(y.max()) == 1.0


def test_flatten_keeps_nhwc_row_major_order(rng):
    x = rng.standard_normal((3, 4, 5, 2)).astype(np.float32)
    y = np.asarray(F.flatten(jnp.asarray(x)))
    assert y.shape == (3, 40)
    # Element (h, w, c) lands at h*W*C + w*C + c, as Keras's Flatten on channels_last.
    assert y[1, 2 * 10 + 3 * 2 + 1] == x[1, 2, 3, 1]
    np.testing.assert_array_equal(y, x.reshape(3, -1))
    assert F.flatten(jnp.zeros((5, 28, 28))).shape == (5, 784)  # the post's 3-D case still works


def test_one_hot():
    np.testing.assert_array_equal(np.asarray(F.one_hot(jnp.array([0, 2, 1]), 3)),
                                  np.eye(3)[[0, 2, 1]])
