"""The two architectures as `flax.linen` modules, written the way Flax's examples/mnist writes them.

Input: float32 NHWC images (N, 28, 28, 1) already scaled to [0, 1]. Output: logits (N, 10).

    MLP:  flatten -> Dense 128 -> relu -> Dense 10
    CNN:  Conv 3x3x32 SAME -> relu -> maxpool 2x2/2 -> Conv 3x3x64 SAME -> relu -> maxpool 2x2/2
          -> flatten (NHWC order, 7*7*64 = 3136) -> Dense 128 -> relu -> Dense 10

Layers carry the canonical names of `fmnist.weights` ("conv_0", "conv_1", "dense_0", "dense_1"), so
a Flax params tree and a canonical weights dict have the same keys and copy by name. (Auto-names
like `Dense_0` would also work here, but `jax.tree.map` sorts keys, so `Dense_10` < `Dense_2`.)

Initialisers. `model.init` would draw kernels from Flax's default `lecun_normal` (truncated normal,
std sqrt(1/fan_in)); Keras's `Dense`/`Conv2D` default to `glorot_uniform` (U(+-sqrt(6/(fan_in +
fan_out)))); the blog post used He-normal (N(0, 2/fan_in)). For the first conv the stds differ by 4x
(Flax sqrt(1/9) = 0.33 vs Keras 0.081). The project never relies on any of them: every implementation starts
from the same canonical weights (`fmnist.weights.init_weights`), loaded with `weights_to_params`.

Two deliberate deviations from Flax's examples, both for speed on XLA's CPU backend and both with
the same math (tested against the idiomatic layers): the pools are `max_pool_2x2` (a custom-VJP
first-max pool; `nn.max_pool`'s gradient is a select-and-scatter, ~15x slower here) and conv_0 is a
`ShiftConv` (the same parameters as `nn.Conv`, computed as 9 shifted slices that XLA fuses with the
relu and the pool). Whole-CNN value_and_grad at batch 128, one process, interleaved: idiomatic
nn.Conv + nn.max_pool 64.0 ms, this module 27.8 ms. Numbers in their docstrings.

Pitfalls avoided (see docs/parity-semantics.md section 3):
  * `nn.Conv(32, 3)` builds a 1-D conv (kernel (3, 1, 32)); the kernel size must be `(3, 3)`.
  * `nn.max_pool(x, (2, 2))` defaults to stride 1; Keras's `MaxPooling2D(2)` uses stride 2.
  * `nn.Conv` pads 'SAME' by default, Keras `Conv2D` 'valid'; both are spelled out here.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fmnist.weights import KERNEL_SHAPES, Weights, check_weights, model_of


@jax.custom_vjp
def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
    """2x2 max-pool with stride 2 on NHWC: y[n,i,j,c] = max over a,b in {0,1} of x[n,2i+a,2j+b,c].

    The same values as the idiomatic `nn.max_pool(x, (2, 2), strides=(2, 2))` (window = stride = 2
    and even H, W: the windows tile the image), and the same gradient, even at ties: all of dy goes
    to the FIRST maximum of each window in row-major order, as in XLA's select-and-scatter (what
    `nn.max_pool` differentiates through) and TF/Keras's MaxPool. What differs is the cost on XLA's
    CPU backend. The forward records the int8 position of each window's first maximum; the backward
    (`jax.custom_vjp`) writes dy at that position and zeros elsewhere, never reading x again.
    Measured on this 2-core CPU box, jitted, forward + backward of relu then pool, median ms,
    interleaved in one process (the box is shared: absolute times vary ~2x between runs):

        input                nn.max_pool   reshape + max   this (first max, custom VJP)
        (128, 28, 28, 32)       ~30            5.45             1.86
        (128, 14, 14, 64)       ~15            1.73             0.56

    (The reshape + max form, this function's previous body, was already 6x faster than nn.max_pool,
    but `jnp.max`'s gradient splits ties evenly, compares x with the max again in the backward, and
    makes XLA keep the whole conv output in memory.) Whole CNN value_and_grad at batch 128 (same
    run): reshape + max 54.5 ms; first max 48.2 ms; first max with `ShiftConv` for conv_0, 31.1 ms.
    """
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _max_pool_2x2_fwd(x):
    n, h, w, c = x.shape
    xw = x.reshape(n, h // 2, 2, w // 2, 2, c)
    views = [xw[:, :, i, :, j, :] for i in range(2) for j in range(2)]  # row-major in the window
    # A running argmax: the index comes from the comparisons that pick the max (strict >, so the
    # first of tied values wins), not from `view == y` afterwards, which can fail in every view when
    # XLA recomputes the fused conv + relu in two places with different rounding (see
    # handrolled.conv._first_max).
    y, first = views[0], jnp.zeros(views[0].shape, jnp.int8)
    for t in range(1, 4):
        first = jnp.where(views[t] > y, jnp.int8(t), first)
        y = jnp.maximum(y, views[t])
    return y, (first, x.shape)


def _max_pool_2x2_bwd(res, dy):
    first, (n, h, w, c) = res
    position = jnp.arange(4, dtype=jnp.int8).reshape(2, 1, 2, 1)  # (a, b) -> 2a + b, broadcast
    dx = jnp.where(first[:, :, None, :, None, :] == position, dy[:, :, None, :, None, :], 0.0)
    return (dx.reshape(n, h, w, c).astype(dy.dtype),)


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


def _shift_conv_3x3(x, kernel):
    """SAME 3x3 stride-1 convolution as sum_{i,j,c} xpad[:, i:i+H, j:j+W, c:c+1] * kernel[i, j, c]."""
    h, w = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    terms = [xp[:, i:i + h, j:j + w, c:c + 1] * kernel[i, j, c]
             for i in range(3) for j in range(3) for c in range(x.shape[-1])]
    return functools.reduce(jnp.add, terms)


@jax.custom_vjp
def shift_conv_3x3(x, kernel):
    return _shift_conv_3x3(x, kernel)


def _shift_conv_fwd(x, kernel):
    return _shift_conv_3x3(x, kernel), (x, kernel)


def _shift_conv_bwd(res, dy):
    x, kernel = res
    h, w = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.concatenate([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=-1)
    # d kernel = patches^T dy: one matrix product (differentiating the broadcast multiplies
    # would be 9*C reductions over dy instead, ~4x slower). The hand-rolled `conv2d_shift` writes it
    # as reshape, .T, dot, and so does this: with einsum("nhwk,nhwo->ko") instead, XLA:CPU first
    # copied both operands into transposed (., N*H*W) layouts (profiled: four copies, 1.6 ms of CPU
    # time per batch-128 step in two halves) and summed in another order. Keep this form: the
    # parity test `test_the_jax_implementations_train_bit_identically` depends on it.
    k = patches.shape[-1]
    dk = jnp.dot(patches.reshape(-1, k).T, dy.reshape(-1, dy.shape[-1])).reshape(kernel.shape)
    _, vjp_x = jax.vjp(lambda x: _shift_conv_3x3(x, kernel), x)  # dropped by XLA when unused
    return vjp_x(dy)[0], dk


shift_conv_3x3.defvjp(_shift_conv_fwd, _shift_conv_bwd)


class ShiftConv(nn.Module):
    """`nn.Conv(features, (3, 3), padding="SAME")` with the same parameters ("kernel" HWIO, "bias")
    and the same sum, computed as 9*C shifted, broadcast-multiplied slices of the input instead of
    a convolution call. For the CNN's first layer (one input channel: 9 terms) this is pure
    elementwise work that XLA fuses with the bias, relu and max pool after it, so the
    (N, 28, 28, 32) activation is never written out; the kernel gradient is one matrix product
    (custom VJP). Measured (batch 128, jitted, one process): forward 0.58 ms vs nn.Conv's 0.99 ms,
    kernel gradient 1.1 ms vs 2.4 ms, and 48 -> 31 ms for the CNN's whole value_and_grad (see
    `max_pool_2x2`). Only for few input channels: the work grows with 9*C, so conv_1 (C = 32)
    stays an `nn.Conv`.
    """

    features: int

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return shift_conv_3x3(x, kernel) + bias


class MLP(nn.Module):
    """flatten -> Dense 128 -> relu -> Dense 10 (logits)."""

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))  # (N, 28, 28, 1) -> (N, 784), row-major like Keras Flatten
        x = nn.Dense(features=128, name="dense_0")(x)
        x = nn.relu(x)
        x = nn.Dense(features=10, name="dense_1")(x)
        return x


class CNN(nn.Module):
    """Two 3x3 SAME convs with relu and 2x2/2 max-pool, then Dense 128 -> relu -> Dense 10 (logits)."""

    @nn.compact
    def __call__(self, x):
        x = ShiftConv(features=32, name="conv_0")(x)  # = nn.Conv(32, (3, 3), padding="SAME"), fused
        x = nn.relu(x)
        x = max_pool_2x2(x)  # = nn.max_pool(x, (2, 2), strides=(2, 2)), faster to differentiate
        x = nn.Conv(features=64, kernel_size=(3, 3), padding="SAME", name="conv_1")(x)
        x = nn.relu(x)
        x = max_pool_2x2(x)
        x = x.reshape((x.shape[0], -1))  # (N, 7, 7, 64) -> (N, 3136), H, W, C order
        x = nn.Dense(features=128, name="dense_0")(x)
        x = nn.relu(x)
        x = nn.Dense(features=10, name="dense_1")(x)
        return x


MODELS = {"mlp": MLP, "cnn": CNN}


def get_model(name: str) -> nn.Module:
    """A fresh `MLP()` or `CNN()` for model name "mlp" or "cnn"."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]()


def weights_to_params(weights: Weights) -> dict:
    """Canonical weights -> Flax params `{"dense_0": {"kernel": jnp, "bias": jnp}, ...}`.

    A plain dict (no FrozenDict), for `model.apply({"params": params}, x)`. Layouts are already
    Flax's (Dense (in, out), Conv HWIO), so this only converts arrays; the values are unchanged.
    """
    check_weights(model_of(weights), weights)
    return {layer: {k: jnp.asarray(v, dtype=jnp.float32) for k, v in p.items()}
            for layer, p in weights.items()}


def params_to_weights(params) -> Weights:
    """Flax params (dict or FrozenDict) -> canonical weights: float32 NumPy, canonical layer order."""
    matches = [shapes for shapes in KERNEL_SHAPES.values() if set(shapes) == set(params)]
    if not matches:
        raise ValueError(f"params with layers {sorted(params)} match no model")
    names = matches[0]  # canonical order, whatever order the params dict has
    weights = {layer: {"kernel": np.asarray(params[layer]["kernel"], np.float32).copy(),
                       "bias": np.asarray(params[layer]["bias"], np.float32).copy()}
               for layer in names}
    check_weights(model_of(weights), weights)
    return weights
