"""The two architectures as Flax NNX modules, written the way Flax's examples/mnist (NNX) writes them.

Input: float32 NHWC images (N, 28, 28, 1) already scaled to [0, 1]. Output: logits (N, 10).

    MLP:  flatten -> Linear 784->128 -> relu -> Linear 128->10
    CNN:  Conv 3x3 1->32 SAME -> relu -> maxpool 2x2/2 -> Conv 3x3 32->64 SAME -> relu -> maxpool 2x2/2
          -> flatten (NHWC order, 7*7*64 = 3136) -> Linear 3136->128 -> relu -> Linear 128->10

NNX modules are objects that hold their parameters (`nnx.Param`s): `__init__` creates the layers
eagerly from `rngs=nnx.Rngs(seed)`, `__call__` is the forward pass, and there is no `init`/`apply`.
Unlike linen's `nn.Dense(features)`, the layers are told their input size (`nnx.Linear(784, 128)`),
because the parameters exist before any input is seen. Attributes carry the canonical names of
`fmnist.weights` ("conv_0", "conv_1", "dense_0", "dense_1"), so `nnx.state(model, nnx.Param)` has the
same keys as a canonical weights dict and as the linen params tree.

Initialisers: `nnx.Linear`/`nnx.Conv` default to lecun_normal, as linen does. The project never uses
them: `from_weights` builds the model abstractly (`nnx.eval_shape`, nothing drawn) and fills in the
canonical weights (`fmnist.weights.init_weights`), as all implementations start from those.

The CNN's first convolution and its pools are constructor arguments, so the fast path can swap in
layers with the same parameters and the same math (`nnx_impl.fast_layers`); the defaults are NNX's own.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from fmnist.weights import KERNEL_SHAPES, Weights, check_weights, model_of


def max_pool(x):
    """2x2 max pooling with stride 2: y[n, i, j, c] = max over a, b in {0, 1} of x[n, 2i+a, 2j+b, c]."""
    return nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")


class MLP(nnx.Module):
    """flatten -> Linear 784->128 -> relu -> Linear 128->10 (logits)."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.dense_0 = nnx.Linear(784, 128, rngs=rngs)
        self.dense_1 = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))  # (N, 28, 28, 1) -> (N, 784), row-major like Keras Flatten
        x = self.dense_0(x)
        x = nnx.relu(x)
        x = self.dense_1(x)
        return x


class CNN(nnx.Module):
    """Two 3x3 SAME convs with relu and 2x2/2 max-pool, then Linear 128 -> relu -> Linear 10 (logits)."""

    def __init__(self, *, rngs: nnx.Rngs, first_conv: Callable[..., nnx.Module] = nnx.Conv,
                 pool: Callable = max_pool):
        self.conv_0 = first_conv(1, 32, kernel_size=(3, 3), padding="SAME", rngs=rngs)  # fast path: ShiftConv
        self.conv_1 = nnx.Conv(32, 64, kernel_size=(3, 3), padding="SAME", rngs=rngs)
        self.pool = pool  # fast path: the first-max pool
        self.dense_0 = nnx.Linear(3136, 128, rngs=rngs)
        self.dense_1 = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x):
        x = self.conv_0(x)
        x = nnx.relu(x)
        x = self.pool(x)
        x = self.conv_1(x)
        x = nnx.relu(x)
        x = self.pool(x)
        x = x.reshape((x.shape[0], -1))  # (N, 7, 7, 64) -> (N, 3136), H, W, C order
        x = self.dense_0(x)
        x = nnx.relu(x)
        x = self.dense_1(x)
        return x


MODELS = {"mlp": MLP, "cnn": CNN}


def build_model(name: str, seed: int = 0, **layers) -> nnx.Module:
    """A fresh `MLP` or `CNN(**layers)` with Flax's default initialisers drawn from `nnx.Rngs(seed)`."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](rngs=nnx.Rngs(seed), **layers)


def from_weights(model_name: str, weights: Weights, **layers) -> nnx.Module:
    """Canonical weights -> an `MLP`/`CNN` whose `nnx.Param`s hold copies of them (float32 jax arrays).

    The model is built abstractly (`nnx.eval_shape`: shapes only, no random draw) and its state filled
    by name, Flax's pattern for restoring a checkpoint. Layouts are already Flax's (Linear (in, out),
    Conv HWIO), so the values are unchanged.
    """
    check_weights(model_name, weights)
    abstract = nnx.eval_shape(lambda: build_model(model_name, **layers))
    graphdef, state = nnx.split(abstract)
    # np.array first: on CPU `jnp.asarray` (and, in jax 0.10, `jnp.array`) may share an aligned NumPy
    # buffer instead of copying it (measured: 1 of 5 sizes), and then writing to the caller's
    # array would change the model.
    nnx.replace_by_pure_dict(state, {layer: {k: jnp.asarray(np.array(v, dtype=np.float32)) for k, v in p.items()}
                                     for layer, p in weights.items()})
    return nnx.merge(graphdef, state)


def to_weights(model) -> Weights:
    """An `MLP`/`CNN` (or an `nnx.State` of its params, e.g. gradients) -> canonical weights:
    float32 NumPy copies, canonical layer order."""
    state = model if isinstance(model, nnx.State) else nnx.state(model, nnx.Param)
    params = nnx.to_pure_dict(state)
    matches = [shapes for shapes in KERNEL_SHAPES.values() if set(shapes) == set(params)]
    if not matches:
        raise ValueError(f"params with layers {sorted(params)} match no model")
    names = matches[0]  # canonical order, whatever order the state has
    weights = {layer: {"kernel": np.asarray(params[layer]["kernel"], np.float32).copy(),
                       "bias": np.asarray(params[layer]["bias"], np.float32).copy()}
               for layer in names}
    check_weights(model_of(weights), weights)
    return weights
