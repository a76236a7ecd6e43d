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
(Flax 0.349 vs Keras 0.081). The project never relies on any of them: every implementation starts
from the same canonical weights (`fmnist.weights.init_weights`), loaded with `weights_to_params`.

Pitfalls avoided (see shared/notes/parity-semantics.md section 3):
  * `nn.Conv(32, 3)` builds a 1-D conv (kernel (3, 1, 32)); the kernel size must be `(3, 3)`.
  * `nn.max_pool(x, (2, 2))` defaults to stride 1; Keras's `MaxPooling2D(2)` uses stride 2.
  * `nn.Conv` pads 'SAME' by default, Keras `Conv2D` 'valid'; both are spelled out here.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from fmnist.weights import KERNEL_SHAPES, Weights, check_weights, model_of


def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
    """2x2 max-pool with stride 2 on NHWC: y[n,i,j,c] = max over a,b in {0,1} of x[n,2i+a,2j+b,c].

    Same values as the idiomatic `nn.max_pool(x, (2, 2), strides=(2, 2))` (window = stride = 2 and
    even H, W: the windows tile the image exactly), written as a reshape and a max because XLA's CPU
    backend differentiates `lax.reduce_window` (what `nn.max_pool` lowers to) through a slow
    select-and-scatter. Measured on this 2-core CPU box, jitted, median of 30 calls (the box is
    shared, so repeated runs vary by up to 30%):

        gradient of the pool alone, input (128, 28, 28, 32):  nn.max_pool 31.8 ms, reshape 4.3 ms
        gradient of the pool alone, input (128, 14, 14, 64):  nn.max_pool 15.7 ms, reshape 2.1 ms
        value_and_grad of the whole CNN loss, batch 128:      nn.max_pool 76-81 ms, reshape 44-58 ms
        value_and_grad of the whole CNN loss, batch 32:       nn.max_pool 19-31 ms, reshape 5.3-7.5 ms
        forward pass of the whole CNN, batch 128:             nn.max_pool 3.3 ms, reshape 3.9 ms

    (Four strided slices combined with `jnp.maximum` are faster still in isolation, 1.8 ms, but not
    inside the CNN: 46-54 ms at batch 128.) Forward values are bit-identical, a max being exact.
    Gradients differ only at ties inside a window: `jnp.max` splits the gradient evenly between
    tied maxima, select-and-scatter gives it all to one. After a relu the ties are almost all at 0, where the
    relu's gradient is 0 anyway; measured gradient difference on a batch: 0.
    """
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


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
        x = nn.Conv(features=32, kernel_size=(3, 3), padding="SAME", name="conv_0")(x)
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
