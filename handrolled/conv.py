"""2-D convolution and max pooling on NHWC images, written two ways each.

Layouts are the ones Keras and Flax use, so kernels copy across unchanged:
images NHWC (batch, height, width, channels), conv kernels HWIO (kh, kw, in, out).

Convolution (really cross-correlation, as in every deep-learning library):

    y[n, p, q, o] = sum_{i, j, c} xpad[n, p*sh + i, q*sw + j, c] * w[i, j, c, o]

* `conv2d_lax`: the direct way, one call to `jax.lax.conv_general_dilated`.
* `conv2d_im2col`: copy every kh x kw window into a row ("image to columns"), then do one
  matrix multiply with the kernel reshaped to (kh*kw*in, out). Same sum, different order of
  additions, so the two agree to float32 rounding (~1e-6), not bitwise.

Max pooling, VALID (windows that run past the edge are dropped, as Keras's `MaxPooling2D`):

    y[n, p, q, c] = max_{i < kh, j < kw} x[n, p*sh + i, q*sw + j, c]

* `max_pool2d_reshape`: when window == stride the windows tile the image, so a reshape to
  (N, H/kh, kh, W/kw, kw, C) and a max over the two window axes is the whole operation.
* `max_pool2d_reduce_window`: `jax.lax.reduce_window`, for any stride (what Flax's `nn.max_pool` uses).

Defaults, from measurements on this project's 2-core CPU box (numbers in the docstrings of
`handrolled.layers.Conv2D` and `MaxPool2D`; rerun with `python -m handrolled.benchmark`):
"lax" for the convolution (im2col was ~25% slower for a training step) and reshape + max for
pooling whenever stride == window (it made the CNN's training step ~1.8x faster at batch 128).

Gradient of max pooling at ties: the reshape form differentiates `jnp.max`, which splits the
incoming gradient equally between tied maxima; `reduce_window` (so Flax's `nn.max_pool`) and TF's
MaxPool (so Keras) send all of it to one of them. Both are valid subgradients and they agree
exactly whenever each window has a unique maximum. On real Fashion-MNIST (256 training images,
freshly initialised CNN) 58% of the first pool's windows are ties at 0 after the relu, which
are harmless (the relu passes zero gradient there either way), and 0.13% are ties at a positive
value (e.g. flat image regions give identical patches). Even so, the CNN's parameter gradients
from the two pooling forms differed by at most 4.5e-8 (max |g| 0.37), i.e. float32 rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "PADDINGS", "CONV_IMPLS", "POOL_IMPLS", "pair", "check_padding", "same_padding", "conv_padding",
    "conv_output_size",
    "im2col", "conv2d_lax", "conv2d_im2col", "conv2d",
    "max_pool2d_reshape", "max_pool2d_reduce_window", "max_pool2d",
]

PADDINGS = ("SAME", "VALID")
CONV_IMPLS = ("lax", "im2col")
POOL_IMPLS = ("auto", "reshape", "reduce_window")


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
    parity-semantics.md section 3).
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
    """NHWC x HWIO convolution (no bias) by `impl`: "lax" or "im2col" (same math, see module doc)."""
    if impl == "im2col":
        return conv2d_im2col(x, w, stride, padding)
    if impl == "lax":
        return conv2d_lax(x, w, stride, padding)
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


def max_pool2d(x: jax.Array, window=2, stride=None, impl: str = "auto") -> jax.Array:
    """VALID max pooling by `impl`: "reshape" (needs stride == window), "reduce_window", or
    "auto" = reshape + max when stride == window (the fast path), else reduce_window."""
    win = pair(window, "window")
    strides = pair(stride if stride is not None else win, "stride")
    if impl not in POOL_IMPLS:
        raise ValueError(f"pool impl must be one of {POOL_IMPLS}, got {impl!r}")
    if impl == "reshape" and strides != win:
        raise ValueError(f"the reshape max pool needs stride == window, got {strides} and {win}")
    if impl == "reshape" or (impl == "auto" and strides == win):
        return max_pool2d_reshape(x, win)
    return max_pool2d_reduce_window(x, win, strides)
