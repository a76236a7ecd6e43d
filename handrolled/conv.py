"""2-D convolution and max pooling on NHWC images, each written three ways.

Layouts are the ones Keras and Flax use, so kernels copy across unchanged:
images NHWC (batch, height, width, channels), conv kernels HWIO (kh, kw, in, out).

Convolution (really cross-correlation, as in every deep-learning library):

    y[n, p, q, o] = sum_{i, j, c} xpad[n, p*sh + i, q*sw + j, c] * w[i, j, c, o]

* `conv2d_lax`: the direct way, one call to `jax.lax.conv_general_dilated`.
* `conv2d_im2col`: copy every kh x kw window into a row ("image to columns"), then do one
  matrix multiply with the kernel reshaped to (kh*kw*in, out).
* `conv2d_shift`: the sum written out as kh*kw*in shifted slices of the input, each multiplied by
  one kernel row (broadcast over the output channels) and added up. Pure elementwise work, so XLA
  fuses it with the bias, relu and pooling after it; its kernel gradient is the im2col matrix
  product (custom VJP). Fast only for few input channels.
All three are the same sum in a different order of additions, so they agree to float32 rounding
(~1e-6), not bitwise.

Max pooling, VALID (windows that run past the edge are dropped, as Keras's `MaxPooling2D`):

    y[n, p, q, c] = max_{i < kh, j < kw} x[n, p*sh + i, q*sw + j, c]

* `max_pool2d_first_max`: when window == stride (the windows tile the image) the max of the
  kh*kw strided views, with a custom VJP: the forward also records the int8 position of each
  window's first maximum (row-major), and the backward writes dy there and 0 elsewhere.
* `max_pool2d_reshape`: when window == stride, a reshape to (N, H/kh, kh, W/kw, kw, C) and
  `jnp.max` over the two window axes, differentiated by JAX.
* `max_pool2d_reduce_window`: `jax.lax.reduce_window`, for any stride (what Flax's `nn.max_pool`
  uses); XLA differentiates it with a select-and-scatter.
The forward values are identical (a max is exact).

Defaults ("auto"), from measurements on this project's 2-core CPU box, jax 0.10.2, batch 128, one
process, variants interleaved, median ms (the box is shared: absolute times vary ~2x between runs,
the order did not), made while XLA:CPU still ran convolutions in YNNPACK (see below):

    forward + backward of relu then pool    reshape   first_max   (reduce_window: ~30 / ~15)
      input (128, 28, 28, 32)                 5.45       1.86
      input (128, 14, 14, 64)                 1.73       0.56
    first conv (28x28x1 -> 32)              lax 0.99 forward, 2.4 kernel grad (+1.1 transposes)
                                            shift 0.58 forward, 1.1 kernel grad (im2col product)
    second conv (14x14x32 -> 64)            lax 4.7 forward, 9.9 kernel grad, 4.7 input grad;
                                            im2col 13.8 / 19.1, shift-sum kernel grad 17.4: lax wins
    CNN value_and_grad (handrolled)         lax + reshape 54.5, lax + first_max 48.2,
                                            shift (conv_0) + lax (conv_1) + first_max 31.1

so "auto" is `shift` for a conv with one input channel, `lax` otherwise, and `first_max` for
pooling whenever stride == window (`reduce_window` otherwise). The whole-step gain is larger than
the parts: with conv_0 as elementwise work, XLA fuses conv_0, bias, relu and the pool's max and
argmax into one pass, so the 128x28x28x32 activation (12.8 MB) is never written to memory.
Compiler options. `fmnist.xla.COMPILER_OPTIONS`, passed to every compiled step, sets two: 512-bit
vector code (8-12% faster), and YNNPACK for matrix products and reductions only, so that the
convolutions run in XLA's own multi-threaded (Eigen) kernels: the second conv at batch 128 then
takes 2.7 / 3.6 / 6.1 ms (forward / input grad / kernel grad) instead of 4.9 / 4.8 / 9.5, and the
choices above still hold (fmnist/xla.py has the measurements). An earlier try that switched YNNPACK
off altogether looked like no win: it also moved the bias gradients' reductions out of YNNPACK, into
slow reduce-window loops. `--xla_cpu_use_onednn`, `--xla_cpu_use_xnnpack` and
`--xla_cpu_multi_thread_eigen=false` made no difference larger than the noise, or were slower.

Gradient of max pooling at ties: `first_max`, `reduce_window` (so Flax's `nn.max_pool`) and TF's
MaxPool (so Keras) send all of a window's gradient to its first maximum in row-major order, so
they agree exactly (tested); `reshape` differentiates `jnp.max`, which splits it equally between
tied maxima. All are valid subgradients and agree whenever each window has a unique maximum. On
real Fashion-MNIST (256 training images, freshly initialised CNN) 58% of the first pool's windows
are ties at 0 after the relu, which are harmless (the relu passes zero gradient there either way),
and 0.13% are ties at a positive value (e.g. flat image regions give identical patches). Even so,
the CNN's parameter gradients from the two rules differed by at most 4.5e-8 (max |g| 0.37), i.e.
float32 rounding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = [
    "PADDINGS", "CONV_IMPLS", "POOL_IMPLS", "pair", "check_padding", "same_padding", "conv_padding",
    "conv_output_size",
    "im2col", "conv2d_lax", "conv2d_im2col", "conv2d_shift", "conv2d",
    "max_pool2d_reshape", "max_pool2d_first_max", "max_pool2d_reduce_window", "max_pool2d",
]

PADDINGS = ("SAME", "VALID")
CONV_IMPLS = ("auto", "lax", "im2col", "shift")
POOL_IMPLS = ("auto", "first_max", "reshape", "reduce_window")


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


def _shifted_windows(x: jax.Array, kernel_hw, stride, padding: str):
    """[(i, j, xpad[:, i::sh, j::sw, :] cut to the output size)] for every kernel tap (i, j)."""
    (kh, kw), (sh, sw) = kernel_hw, pair(stride, "stride")
    _, h, w, _ = x.shape
    (pt, pb), (pl, pr) = conv_padding((h, w), (kh, kw), (sh, sw), padding)
    ho, wo = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"kernel {(kh, kw)} is larger than the padded input {(h + pt + pb, w + pl + pr)}")
    x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    return [(i, j, x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :])
            for i in range(kh) for j in range(kw)]


def _conv2d_shift_forward(x, w, stride, padding):
    kh, kw, cin, _ = w.shape
    y = None
    for i, j, xs in _shifted_windows(x, (kh, kw), stride, padding):
        for c in range(cin):
            term = xs[..., c:c + 1] * w[i, j, c]  # (N, Ho, Wo, 1) * (O,): a broadcast multiply
            y = term if y is None else y + term
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d_shift(x, w, stride, padding):
    return _conv2d_shift_forward(x, w, stride, padding)


def _conv2d_shift_fwd(x, w, stride, padding):
    return _conv2d_shift_forward(x, w, stride, padding), (x, w)


def _conv2d_shift_bwd(stride, padding, res, dy):
    x, w = res
    kh, kw, cin, cout = w.shape
    # dL/dw[i, j, c, o] = sum_{n, p, q} xpad[n, p*sh + i, q*sw + j, c] * dy[n, p, q, o]: one matrix
    # product of the patches (N*Ho*Wo, kh*kw*cin) with dy (N*Ho*Wo, cout). Differentiating the
    # forward's broadcast multiplies instead would give kh*kw*cin separate reductions over dy, ~4x slower.
    patches = im2col(x, (kh, kw), stride, padding)
    dw = jnp.dot(patches.reshape(-1, kh * kw * cin).T, dy.reshape(-1, cout)).reshape(w.shape)
    # dL/dx: the transpose of the forward's shifted slices (pads and adds); XLA drops it when x is
    # the input images, whose gradient nobody asks for.
    _, vjp_x = jax.vjp(lambda x: _conv2d_shift_forward(x, w, stride, padding), x)
    return vjp_x(dy)[0], dw.astype(w.dtype)


_conv2d_shift.defvjp(_conv2d_shift_fwd, _conv2d_shift_bwd)


def conv2d_shift(x: jax.Array, w: jax.Array, stride=1, padding: str = "SAME") -> jax.Array:
    """NHWC x HWIO convolution (no bias) as a sum of kh*kw*in shifted, broadcast-multiplied slices:

        y = sum_{i, j, c} xpad[:, i::sh, j::sw, c:c+1] * w[i, j, c, :]

    Pure elementwise work, no patch matrix, so XLA fuses it with whatever follows (bias, relu, the
    max pool): for the CNN's first conv (in = 1, only 9 terms) the 128x28x28x32 output never has to
    be written to memory. Its kernel gradient is one matrix product of the patches with dy
    (custom VJP, see `_conv2d_shift_bwd`). Meant for few input channels: the work grows with
    kh*kw*in, so "auto" uses it only for in == 1.
    """
    return _conv2d_shift(x, w, pair(stride, "stride"), check_padding(padding))


def conv_impl_for(in_channels: int, impl: str = "auto") -> str:
    """The conv implementation `impl` names; "auto" = "shift" for one input channel, else "lax"."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv impl must be one of {CONV_IMPLS}, got {impl!r}")
    if impl == "auto":
        return "shift" if in_channels == 1 else "lax"
    return impl


def conv2d(x: jax.Array, w: jax.Array, stride=1, padding: str = "SAME", impl: str = "auto") -> jax.Array:
    """NHWC x HWIO convolution (no bias) by `impl`: "lax", "im2col", "shift", or "auto" ("shift"
    when the kernel has one input channel, else "lax"); the same sum, see the module doc."""
    impl = conv_impl_for(w.shape[2], impl)
    if impl == "shift":
        return conv2d_shift(x, w, stride, padding)
    if impl == "im2col":
        return conv2d_im2col(x, w, stride, padding)
    if impl == "lax":
        return conv2d_lax(x, w, stride, padding)
    raise AssertionError(impl)  # unreachable: conv_impl_for checked it


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


def _pool_windows(x: jax.Array, window) -> list[jax.Array]:
    """The kh*kw strided views x[:, i::kh, j::kw] of a tiling pool, in row-major (i, j) order."""
    kh, kw = window
    n, h, w, c = x.shape
    ho, wo = h // kh, w // kw
    xw = x[:, :ho * kh, :wo * kw, :].reshape(n, ho, kh, wo, kw, c)
    return [xw[:, :, i, :, j, :] for i in range(kh) for j in range(kw)]


def _first_max(x, window):
    """(max of each window, int8 row-major index of its first maximum), as one running argmax.

    The index comes from the same comparisons that pick the max (`views[t] > best`, strict, so the
    earliest of tied values wins), never from comparing `x` with the max afterwards: XLA fuses the
    producer of `x` (the shift conv, bias and relu) into each consumer and recomputes it there, and
    two recomputations may round differently (FMA contraction), so `views[t] == y` can be false for
    every t of a window. Here the index always points at a maximum of the values it was chosen from.
    """
    views = _pool_windows(x, window)
    y, idx = views[0], jnp.zeros(views[0].shape, jnp.int8)
    for t in range(1, len(views)):
        idx = jnp.where(views[t] > y, jnp.int8(t), idx)
        y = jnp.maximum(y, views[t])
    return y, idx


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool2d_first_max(x, window):
    return functools.reduce(jnp.maximum, _pool_windows(x, window))


def _max_pool2d_first_max_fwd(x, window):
    y, idx = _first_max(x, window)
    return y, (idx, x.shape)


def _max_pool2d_first_max_bwd(window, res, dy):
    idx, shape = res
    (kh, kw), (n, h, w, c) = window, shape
    ho, wo = h // kh, w // kw
    taps = jnp.arange(kh * kw, dtype=jnp.int8).reshape(kh, 1, kw, 1)  # broadcast over (kh, wo, kw, c)
    dx = jnp.where(idx[:, :, None, :, None, :] == taps, dy[:, :, None, :, None, :], jnp.zeros((), dy.dtype))
    dx = dx.reshape(n, ho * kh, wo * kw, c)
    if (ho * kh, wo * kw) != (h, w):  # rows/columns VALID dropped get no gradient
        dx = jnp.pad(dx, ((0, 0), (0, h - ho * kh), (0, w - wo * kw), (0, 0)))
    return (dx,)


_max_pool2d_first_max.defvjp(_max_pool2d_first_max_fwd, _max_pool2d_first_max_bwd)


def max_pool2d_first_max(x: jax.Array, window) -> jax.Array:
    """VALID max pooling with stride == window whose gradient goes to the FIRST maximum of each
    window (row-major order), as TF/Keras's MaxPool and XLA's select-and-scatter do.

    Forward: the max of the kh*kw strided views (exact, the same values as every other form).
    Backward (custom VJP): the forward also records, per window, the int8 index of its first
    maximum; the gradient is dx = dy where the index matches, else 0. The big input is read once
    (forward) and dx written once; the backward never reads x again.
    """
    if x.ndim != 4:
        raise ValueError(f"max pooling expects NHWC input, got shape {x.shape}")
    kh, kw = pair(window, "window")
    if kh * kw > 127:
        raise ValueError(f"window {(kh, kw)} too large for the int8 index")
    return _max_pool2d_first_max(x, (kh, kw))


def max_pool2d_reduce_window(x: jax.Array, window, stride=None) -> jax.Array:
    """VALID max pooling for any stride by `jax.lax.reduce_window` (stride defaults to window)."""
    kh, kw = pair(window, "window")
    sh, sw = pair(stride if stride is not None else (kh, kw), "stride")
    # The init value must be a Python scalar: only then does JAX recognise the max-reduction
    # (reduce_window_max, which has a gradient) instead of a generic, non-differentiable one.
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, kh, kw, 1), (1, sh, sw, 1), "VALID")


def max_pool2d(x: jax.Array, window=2, stride=None, impl: str = "auto") -> jax.Array:
    """VALID max pooling by `impl`: "first_max" or "reshape" (both need stride == window),
    "reduce_window", or "auto" = first_max when stride == window (the fast path), else reduce_window."""
    win = pair(window, "window")
    strides = pair(stride if stride is not None else win, "stride")
    if impl not in POOL_IMPLS:
        raise ValueError(f"pool impl must be one of {POOL_IMPLS}, got {impl!r}")
    if impl in ("reshape", "first_max") and strides != win:
        raise ValueError(f"the {impl} max pool needs stride == window, got {strides} and {win}")
    if impl == "first_max" or (impl == "auto" and strides == win):
        return max_pool2d_first_max(x, win)
    if impl == "reshape":
        return max_pool2d_reshape(x, win)
    return max_pool2d_reduce_window(x, win, strides)
