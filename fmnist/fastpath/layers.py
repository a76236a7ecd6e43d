"""The fast path's two layers, shared by every JAX implementation: same math, cheaper on XLA:CPU.

* `shift_conv_3x3(x, kernel)`: a SAME, stride-1 3x3 convolution (no bias), NHWC x HWIO,

      y[n, p, q, o] = sum_{i, j, c} xpad[n, p + i, q + j, c] * kernel[i, j, c, o]

  written as 9*C shifted, broadcast-multiplied slices of the input: pure elementwise work that XLA
  fuses with the bias, relu and max pool after it. Its kernel gradient is one matrix product
  (custom VJP). Meant for few input channels (the CNN's first layer, C = 1).
* `max_pool_2x2(x)`: VALID 2x2 max pooling with stride 2, y[n, i, j, c] = max_{a, b} x[n, 2i+a, 2j+b, c],
  whose gradient goes to the FIRST maximum of each window (row-major), as TF/Keras's MaxPool and
  XLA's select-and-scatter (`nn.max_pool`) do. The forward records each window's argmax as an int8;
  the backward (custom VJP) writes dy there, never reading x again.

The readable layers they stand in for (`lax` convolution, reshape max-pool) give the same values
to float32 rounding; tests compare them. Why they are faster, with figures: docs/performance.md.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["shift_conv_3x3", "max_pool_2x2"]


def _shift_conv_3x3(x, kernel):
    h, w = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    terms = [xp[:, i:i + h, j:j + w, c:c + 1] * kernel[i, j, c]
             for i in range(3) for j in range(3) for c in range(x.shape[-1])]
    return functools.reduce(jnp.add, terms)


def shift_conv_3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """SAME 3x3 stride-1 convolution as sum_{i,j,c} xpad[:, i:i+H, j:j+W, c:c+1] * kernel[i, j, c]."""
    if x.ndim != 4 or kernel.shape[:3] != (3, 3, x.shape[-1]):
        raise ValueError(f"shift_conv_3x3 needs NHWC input and a (3, 3, {x.shape[-1]}, out) kernel, "
                         f"got {x.shape} and {kernel.shape}")
    return _shift_conv(x, kernel)


@jax.custom_vjp
def _shift_conv(x, kernel):
    return _shift_conv_3x3(x, kernel)


def _shift_conv_fwd(x, kernel):
    return _shift_conv_3x3(x, kernel), (x, kernel)


def _shift_conv_bwd(res, dy):
    x, kernel = res
    h, w = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.concatenate([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=-1)
    # dkernel = patches^T dy, one matrix product (differentiating the broadcast multiplies would be
    # 9*C reductions over dy). Written as reshape, .T, dot: with einsum XLA:CPU copied both operands
    # into transposed layouts and summed in another order (docs/performance.md).
    k = patches.shape[-1]
    dk = jnp.dot(patches.reshape(-1, k).T, dy.reshape(-1, dy.shape[-1])).reshape(kernel.shape)
    _, vjp_x = jax.vjp(lambda x: _shift_conv_3x3(x, kernel), x)  # dropped by XLA when unused
    return vjp_x(dy)[0], dk


_shift_conv.defvjp(_shift_conv_fwd, _shift_conv_bwd)


def _windows(x):
    n, h, w, c = x.shape
    xw = x.reshape(n, h // 2, 2, w // 2, 2, c)
    return [xw[:, :, i, :, j, :] for i in range(2) for j in range(2)]  # row-major in the window


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """VALID 2x2 max pooling, stride 2, NHWC (even H and W); the gradient goes to each window's first maximum."""
    if x.ndim != 4 or x.shape[1] % 2 or x.shape[2] % 2:
        raise ValueError(f"max_pool_2x2 needs NHWC input with even height and width, got {x.shape}")
    return _max_pool(x)


# The pooled output goes through an optimization barrier, so XLA writes it once: otherwise XLA
# fuses the whole conv-bias-relu-pool chain into each consumer, and the kernel gradient of the next
# convolution (which reads it in a transposed layout) recomputed it there, 2.4 ms of a 25 ms CNN step.
@jax.custom_vjp
def _max_pool(x):
    return jax.lax.optimization_barrier(functools.reduce(jnp.maximum, _windows(x)))


def _max_pool_fwd(x):
    views = _windows(x)
    # A running argmax: the index comes from the comparisons that pick the max (strict >, so the
    # first of tied values wins), never from `view == max` afterwards. XLA fuses the producer of x
    # (conv, bias, relu) into each consumer and recomputes it there, and two recomputations may
    # round differently, so `view == max` can be false in every view of a window.
    y, first = views[0], jnp.zeros(views[0].shape, jnp.int8)
    for t in range(1, 4):
        first = jnp.where(views[t] > y, jnp.int8(t), first)
        y = jnp.maximum(y, views[t])
    return jax.lax.optimization_barrier(y), (first, x.shape)


def _max_pool_bwd(res, dy):
    first, (n, h, w, c) = res
    position = jnp.arange(4, dtype=jnp.int8).reshape(2, 1, 2, 1)  # (a, b) -> 2a + b, broadcast
    dx = jnp.where(first[:, :, None, :, None, :] == position, dy[:, :, None, :, None, :], 0.0)
    return (dx.reshape(n, h, w, c).astype(dy.dtype),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
