"""The two architectures as `flax.linen` modules, written the way Flax's examples/mnist writes them.

Input: float32 NHWC images (N, 28, 28, 1) already scaled to [0, 1]. Output: logits (N, 10).

    MLP:  flatten -> Dense 128 -> relu -> Dense 10
    CNN:  Conv 3x3x32 SAME -> relu -> maxpool 2x2/2 -> Conv 3x3x64 SAME -> relu -> maxpool 2x2/2
          -> flatten (NHWC order, 7*7*64 = 3136) -> Dense 128 -> relu -> Dense 10

Layers carry the canonical names of `fmnist.weights` ("conv_0", "conv_1", "dense_0", "dense_1"), so
a Flax params tree and a canonical weights dict have the same keys and copy by name. (Auto-names
like `Dense_0` would also work here, but `jax.tree.map` sorts keys, so `Dense_10` < `Dense_2`.)

A linen module holds no weights: `model.apply({"params": params}, x)` takes them, so `from_weights`
returns the params tree, not a model. Initialisers: `model.init` would draw kernels from Flax's
default `lecun_normal` (truncated normal, std sqrt(1/fan_in)); Keras defaults to `glorot_uniform`;
the blog post used He-normal. The project never relies on any of them: every implementation starts
from the same canonical weights (`fmnist.weights.init_weights`), loaded with `from_weights`.

The CNN's first convolution and its pools are fields, so the fast path can swap in layers with the
same parameters and the same math (`flax_impl.fast_layers`); the defaults are linen's own.

Pitfalls avoided (see docs/parity-semantics.md section 3):
  * `nn.Conv(32, 3)` builds a 1-D conv (kernel (3, 1, 32)); the kernel size must be `(3, 3)`.
  * `nn.max_pool(x, (2, 2))` defaults to stride 1; Keras's `MaxPooling2D(2)` uses stride 2.
  * `nn.Conv` pads 'SAME' by default, Keras `Conv2D` 'valid'; both are spelled out here.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from fmnist.weights import KERNEL_SHAPES, Weights, check_weights


def max_pool(x: jnp.ndarray) -> jnp.ndarray:
    """2x2 max pooling with stride 2: y[n, i, j, c] = max over a, b in {0, 1} of x[n, 2i+a, 2j+b, c]."""
    return nn.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")


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

    first_conv: Callable[..., nn.Module] = nn.Conv  # the fast path: fast_layers.ShiftConv
    pool: Callable[[jnp.ndarray], jnp.ndarray] = max_pool  # the fast path: the first-max pool

    @nn.compact
    def __call__(self, x):
        x = self.first_conv(features=32, kernel_size=(3, 3), padding="SAME", name="conv_0")(x)
        x = nn.relu(x)
        x = self.pool(x)
        x = nn.Conv(features=64, kernel_size=(3, 3), padding="SAME", name="conv_1")(x)
        x = nn.relu(x)
        x = self.pool(x)
        x = x.reshape((x.shape[0], -1))  # (N, 7, 7, 64) -> (N, 3136), H, W, C order
        x = nn.Dense(features=128, name="dense_0")(x)
        x = nn.relu(x)
        x = nn.Dense(features=10, name="dense_1")(x)
        return x


MODELS = {"mlp": MLP, "cnn": CNN}


def build_model(name: str, **layers) -> nn.Module:
    """A fresh `MLP()` or `CNN(**layers)` for model name "mlp" or "cnn" (a linen module: no weights)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](**layers)


def from_weights(model_name: str, weights: Weights) -> dict:
    """Canonical weights -> the Flax params `{"dense_0": {"kernel": jnp, "bias": jnp}, ...}` of `model_name`.

    A plain dict (no FrozenDict), for `model.apply({"params": params}, x)`. Layouts are already
    Flax's (Dense (in, out), Conv HWIO), so this only converts arrays; the values are unchanged.
    """
    check_weights(model_name, weights)
    return {layer: {k: jnp.asarray(v, dtype=jnp.float32) for k, v in p.items()}
            for layer, p in weights.items()}


def to_weights(params) -> Weights:
    """Flax params (dict or FrozenDict) -> canonical weights: float32 NumPy, canonical layer order."""
    matches = [name for name, shapes in KERNEL_SHAPES.items() if set(shapes) == set(params)]
    if not matches:
        raise ValueError(f"params with layers {sorted(params)} match no model")
    weights = {layer: {"kernel": np.asarray(params[layer]["kernel"], np.float32).copy(),
                       "bias": np.asarray(params[layer]["bias"], np.float32).copy()}
               for layer in KERNEL_SHAPES[matches[0]]}  # canonical order, whatever order params has
    check_weights(matches[0], weights)
    return weights
