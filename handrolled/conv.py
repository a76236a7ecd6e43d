"""2-D convolution and max pooling on NHWC images, each written more than one way.

Layouts are the ones Keras and Flax use, so kernels copy across unchanged:
images NHWC (batch, height, width, channels), conv kernels HWIO (kh, kw, in, out).

Convolution (really cross-correlation, as in every deep-learning library):

    y[n, p, q, o] = sum_{i, j, c} xpad[n, p*sh + i, q*sw + j, c] * w[i, j, c, o]

* `conv2d_lax`: the direct way, one call to `jax.lax.conv_general_dilated` (the default).
* `conv2d_im2col`: copy every kh x kw window into a row ("image to columns"), then do one
  matrix multiply with the kernel reshaped to (kh*kw*in, out).
* "shift" (the fast path's `fmnist.fastpath.layers.shift_conv_3x3`, 3x3 SAME stride 1 only): the
  sum written out as shifted slices of the input.
All are the same sum in a different order of additions, so they agree to float32 rounding
(~1e-6), not bitwise.

Max pooling, VALID (windows that run past the edge are dropped, as Keras's `MaxPooling2D`):

    y[n, p, q, c] = max_{i < kh, j < kw} x[n, p*sh + i, q*sw + j, c]

* `max_pool2d_reshape`: when window == stride, a reshape to (N, H/kh, kh, W/kw, kw, C) and
  `jnp.max` over the two window axes, differentiated by JAX (the default).
* `max_pool2d_reduce_window`: `jax.lax.reduce_window`, for any stride (what Flax's `nn.max_pool`
  uses); XLA differentiates it with a select-and-scatter.
* "first_max" (the fast path's `fmnist.fastpath.layers.max_pool_2x2`, 2x2 stride 2 only).
The forward values are identical (a max is exact). The gradients differ only at ties: `reshape`
differentiates `jnp.max`, which splits the gradient equally between tied maxima; `reduce_window`,
first_max and TF/Keras's MaxPool send it all to the first maximum in row-major order. Both are
valid subgradients; docs/parity-semantics.md measures how often ties happen on real data and how
little it changes the CNN's gradient. Speed of each form: docs/performance.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fmnist.fastpath import layers as fastpath_layers

__all__ = [
    "PADDINGS", "CONV_IMPLS", "POOL_IMPLS", "pair", "check_padding", "same_padding", "conv_padding",
    "conv_output_size",
    "im2col", "conv2d_lax", "conv2d_im2col", "conv2d",
    "max_pool2d_reshape", "max_pool2d_reduce_window", "max_pool2d",
]

PADDINGS = ("SAME", "VALID")
CONV_IMPLS = ("lax", "im2col", "shift")
POOL_IMPLS = ("reshape", "reduce_window", "first_max")


def pair(v, name: str = "value") -> tuple[int, int]:
    """(v, v) for an int, or the 2-tuple itself; both entries must be positive ints."""
    t = (v, v) if isinstance(v, int) else tuple(v)
    if len(t) != 2 or not all(isinstance(a, int) and a > 0 for a in t):
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {v!r}")
    return t


def check_padding(padding: str) -> str:
    """Upper-cased `padding`, which must be 'SAME' or 'VALID' (any case)."""
    p = str(padding).upper()
    if p not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    return p


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of one spatial axis for 'SAME': output size ceil(size / stride).

    total = max((ceil(size / stride) - 1) * stride + kernel - size, 0); before = total // 2 and
    after = total - before, so an odd extra row/column goes at the bottom/right. This is what
    Keras 'same', Flax 'SAME' and `lax.padtype_to_pads` do (measured identical in
    docs/parity-semantics.md section 3).
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv_padding(spatial: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
                 padding: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) padding for an (H, W) input; zeros for 'VALID'."""
    if check_padding(padding) == "VALID":
        return (0, 0), (0, 0)
    return tuple(same_padding(n, k, s) for n, k, s in zip(spatial, kernel, stride))


def conv_output_size(size: int, kernel: int, stride: int, padding: str) -> int:
    """Output length of one axis: ceil(size / stride) for 'SAME', floor((size - kernel) / stride) + 1 for 'VALID'."""
    if check_padding(padding) == "SAME":
        return -(-size // stride)
    return (size - kernel) // stride + 1


def im2col(x: jax.Array, kernel_size, stride=1, padding: str = "SAME") -> jax.Array:
    """Patches of an NHWC batch: out[n, p, q, (i*kw + j)*C + c] = xpad[n, p*sh + i, q*sw + j, c].

    Shape (N, Ho, Wo, kh*kw*C). The last axis runs over (i, j, c) in row-major order, the order
    of an HWIO kernel reshaped to (kh*kw*C, O), so `im2col(x) @ w.reshape(-1, O)` is the conv.
    Built from kh*kw strided slices (no gather), so its gradient is kh*kw pads and adds.
    """
    (kh, kw), (sh, sw) = pair(kernel_size, "kernel_size"), pair(stride, "stride")
    _, h, w, _ = x.shape
    (pt, pb), (pl, pr) = conv_padding((h, w), (kh, kw), (sh, sw), padding)
    x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    ho = (h + pt + pb - kh) // sh + 1
    wo = (w + pl + pr - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"kernel {(kh, kw)} is larger than the padded input {(h + pt + pb, w + pl + pr)}")
    cols = [x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
            for i in range(kh) for j in range(kw)]
    return jnp.concatenate(cols, axis=-1)


def conv2d_lax(x: jax.Array, w: jax.Array, stride=1, padding: str = "SAME") -> jax.Array:
    """NHWC x HWIO convolution (no bias) by `jax.lax.conv_general_dilated`, padding as `same_padding`."""
    kh, kw = w.shape[:2]
    strides = pair(stride, "stride")
    pads = conv_padding(x.shape[1:3], (kh, kw), strides, padding)
    return jax.lax.conv_general_dilated(x, w, window_strides=strides, padding=pads,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv2d_im2col(x: jax.Array, w: jax.Array, stride=1, padding: str = "SAME") -> jax.Array:
    """NHWC x HWIO convolution (no bias) as im2col(x) @ w.reshape(kh*kw*in, out)."""
    kh, kw, cin, cout = w.shape
    patches = im2col(x, (kh, kw), stride, padding)
    return patches @ w.reshape(kh * kw * cin, cout)


def conv2d(x: jax.Array, w: jax.Array, stride=1, padding: str = "SAME", impl: str = "lax") -> jax.Array:
    """NHWC x HWIO convolution (no bias) by `impl`: "lax", "im2col" or "shift" (the fast path's
    shift convolution: 3x3 kernels, stride 1, SAME padding only); the same sum, see the module doc."""
    if impl == "lax":
        return conv2d_lax(x, w, stride, padding)
    if impl == "im2col":
        return conv2d_im2col(x, w, stride, padding)
    if impl == "shift":
        if pair(stride, "stride") != (1, 1) or check_padding(padding) != "SAME":
            raise ValueError(f"the shift convolution needs stride 1 and SAME padding, got {stride!r}, {padding!r}")
        return fastpath_layers.shift_conv_3x3(x, w)
    raise ValueError(f"conv impl must be one of {CONV_IMPLS}, got {impl!r}")


def max_pool2d_reshape(x: jax.Array, window) -> jax.Array:
    """VALID max pooling with stride == window, as reshape + max.

    y = max over axes (2, 4) of x[:, :Ho*kh, :Wo*kw].reshape(N, Ho, kh, Wo, kw, C), Ho = H // kh.
    Rows/columns that do not fill a window are dropped, as in 'VALID'.
    """
    kh, kw = pair(window, "window")
    n, h, w, c = x.shape
    ho, wo = h // kh, w // kw
    x = x[:, :ho * kh, :wo * kw, :]
    return jnp.max(x.reshape(n, ho, kh, wo, kw, c), axis=(2, 4))


def max_pool2d_reduce_window(x: jax.Array, window, stride=None) -> jax.Array:
    """VALID max pooling for any stride by `jax.lax.reduce_window` (stride defaults to window)."""
    kh, kw = pair(window, "window")
    sh, sw = pair(stride if stride is not None else (kh, kw), "stride")
    # The init value must be a Python scalar: only then does JAX recognise the max-reduction
    # (reduce_window_max, which has a gradient) instead of a generic, non-differentiable one.
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, kh, kw, 1), (1, sh, sw, 1), "VALID")


def max_pool2d(x: jax.Array, window=2, stride=None, impl: str | None = None) -> jax.Array:
    """VALID max pooling by `impl`: "reshape" (needs stride == window), "reduce_window" (any
    stride), "first_max" (the fast path's first-max pool: window and stride 2 only), or None:
    reshape when the windows tile the image (stride == window), else reduce_window."""
    win = pair(window, "window")
    strides = pair(stride if stride is not None else win, "stride")
    if impl is None:
        impl = "reshape" if strides == win else "reduce_window"
    if impl == "reduce_window":
        return max_pool2d_reduce_window(x, win, strides)
    if impl == "reshape":
        if strides != win:
            raise ValueError(f"the reshape max pool needs stride == window, got {strides} and {win}")
        return max_pool2d_reshape(x, win)
    if impl == "first_max":
        if win != (2, 2) or strides != (2, 2):
            raise ValueError(f"the first-max pool needs window and stride 2, got {win} and {strides}")
        return fastpath_layers.max_pool_2x2(x)
    raise ValueError(f"pool impl must be one of {POOL_IMPLS}, got {impl!r}")
