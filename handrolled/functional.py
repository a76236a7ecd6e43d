"""Parameter-free functions: activations, softmax, and the image-reshaping helpers.

These are the blog post's "helpful functions", with three of its bugs fixed:

* `relu`: the post wrote `jnp.clip(x, a_min=0)`; the `a_min` keyword is gone from current JAX
  (it is `min=` now). We also give it the gradient 0 at x == 0, as `jax.nn.relu`, `tf.nn.relu`
  and Keras do (see `relu`).
* `softmax`: the post's `exp(x) / sum(exp(x))` overflows for logits above ~88.7 in float32 and
  returns nan (`[1000, 0, -1000]` -> `[nan, 0, 0]`). Subtracting the row maximum first makes it exact.
* `log_softmax` is new: taking `log(softmax(x))` underflows to `log(0) = -inf` once a logit gap
  exceeds ~104, while `z - logsumexp(z)` stays finite. The losses use it.

All functions work on any float dtype and on the last axis, so they jit and vmap.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["relu", "softmax", "log_softmax", "logsumexp", "rescale_image", "flatten", "one_hot"]


@jax.custom_jvp
def relu(x: jax.Array) -> jax.Array:
    """Rectified linear unit, relu(x) = max(x, 0), with d relu / dx = 1 if x > 0 else 0.

    Fixes the post's `jnp.clip(x, a_min=0)` (the `a_min` keyword no longer exists).
    The forward pass is `jnp.clip(x, min=0)`, but its automatic derivative at exactly x == 0 is
    0.5 (JAX splits the gradient of `max` evenly between tied arguments). That case is common
    here, not a curiosity: with zero biases, a conv over a blank (all-zero) image patch gives a
    pre-activation of exactly 0. So we define the derivative ourselves, 0 at x == 0, which is
    what `jax.nn.relu` (hence Flax) and `tf.nn.relu` (hence Keras) use.
    """
    return jnp.clip(x, min=0)


@relu.defjvp
def _relu_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return relu(x), jnp.where(x > 0, dx, jnp.zeros_like(dx))


def logsumexp(x: jax.Array, axis: int = -1, keepdims: bool = False) -> jax.Array:
    """log(sum_j exp(x_j)) along `axis`, computed stably as m + log(sum_j exp(x_j - m)), m = max_j x_j.

    After the shift every exponent is <= 0, so nothing overflows, and the largest term is
    exp(0) = 1, so the sum is >= 1 and its log is finite. The max is wrapped in
    `stop_gradient` because the result does not depend on m mathematically; this keeps the
    gradient exactly softmax(x) instead of a cancelling sum through the max.
    """
    m = jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    out = m + jnp.log(jnp.sum(jnp.exp(x - m), axis=axis, keepdims=True))
    return out if keepdims else jnp.squeeze(out, axis=axis)


def softmax(x: jax.Array, axis: int = -1) -> jax.Array:
    """softmax(x)_i = exp(x_i - m) / sum_j exp(x_j - m), with m = max_j x_j.

    Fixes the post's naive `exp(x) / sum(exp(x))`, which is nan for a logit of 1000
    (exp overflows to inf and inf/inf = nan). Shifting by m changes nothing mathematically
    (the factor exp(-m) cancels) but keeps every exponent <= 0.
    """
    z = x - jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    e = jnp.exp(z)
    return e / jnp.sum(e, axis=axis, keepdims=True)


def log_softmax(x: jax.Array, axis: int = -1) -> jax.Array:
    """log softmax(x)_i = x_i - logsumexp(x) = z_i - log(sum_j exp(z_j)), with z = x - max_j x_j.

    Finite for any finite input; `log(softmax(x))` would give -inf once softmax underflows to 0.
    """
    z = x - jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    return z - jnp.log(jnp.sum(jnp.exp(z), axis=axis, keepdims=True))


def rescale_image(x: jax.Array) -> jax.Array:
    """Pixels from [0, 255] to [0, 1]: x / 255.0 (uint8 input becomes float32).

    Kept from the post for interactive use. The models do NOT call it: under `jax.jit`, XLA
    compiles `x / 255.0` to `x * (1/255)`, which differs from NumPy's IEEE division in the last
    bit for 126 of the 256 pixel values. For parity with Flax and Keras, scale once in NumPy
    (`fmnist.data.preprocess`) and feed the same float32 arrays to every implementation.
    """
    return jnp.asarray(x) / 255.0


def flatten(x: jax.Array) -> jax.Array:
    """Reshape a batch (N, d1, d2, ...) to (N, d1*d2*...), row-major.

    On NHWC images this is H, W, C order, the same as Keras's `Flatten` and Flax's
    `x.reshape(N, -1)`, so a Dense kernel copied between them means the same thing.
    (The post asserted 3-D input; this accepts any rank >= 1, e.g. (N, 28, 28, 1).)
    """
    x = jnp.asarray(x)
    return jnp.reshape(x, (x.shape[0], -1))


def one_hot(labels: jax.Array, num_classes: int, dtype=jnp.float32) -> jax.Array:
    """One-hot rows: out[i, k] = 1 if labels[i] == k else 0, shape labels.shape + (num_classes,)."""
    labels = jnp.asarray(labels)
    return (labels[..., None] == jnp.arange(num_classes)).astype(dtype)
