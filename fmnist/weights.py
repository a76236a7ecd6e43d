"""The canonical weights format every implementation exports to and loads from.

A model's weights are a plain dict, in layer order, of `{"kernel": array, "bias": array}` per
parametrised layer, float32 NumPy arrays, in the layouts Keras and Flax both use:

    Dense kernel (in, out), y = x @ kernel + bias
    Conv2D kernel HWIO (kh, kw, in_channels, out_channels), on NHWC images

Layer names are fixed here (`conv_0`, `conv_1`, `dense_0`, `dense_1`), so a weight file means the
same thing to the hand-rolled model, the Flax params tree and the Keras layers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fmnist import initializers

Weights = dict[str, dict[str, np.ndarray]]

# The two architectures, as kernel shapes per parametrised layer, in call order.
#   mlp: flatten, dense 784->128, relu, dense 128->10 (the blog post's network).
#   cnn: conv 3x3x32 SAME, relu, maxpool 2x2/2, conv 3x3x64 SAME, relu, maxpool 2x2/2,
#        flatten (NHWC order, 7*7*64 = 3136), dense 3136->128, relu, dense 128->10.
KERNEL_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "mlp": {"dense_0": (784, 128), "dense_1": (128, 10)},
    "cnn": {"conv_0": (3, 3, 1, 32), "conv_1": (3, 3, 32, 64),
            "dense_0": (3136, 128), "dense_1": (128, 10)},
}
MODEL_NAMES = tuple(KERNEL_SHAPES)


def check_model_name(model: str) -> None:
    if model not in KERNEL_SHAPES:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODEL_NAMES)}")


def init_weights(model: str, init: str = "he_normal", seed: int = 0) -> Weights:
    """Fresh canonical weights: kernels from initialiser `init`, biases zero.

    One NumPy generator seeded with `seed` draws the kernels in layer order.
    """
    check_model_name(model)
    init_fn = initializers.get(init)
    rng = np.random.default_rng(seed)
    return {name: {"kernel": init_fn(rng, shape), "bias": np.zeros(shape[-1], np.float32)}
            for name, shape in KERNEL_SHAPES[model].items()}


def check_weights(model: str, weights: Weights) -> None:
    """Raise ValueError unless `weights` has exactly the layers and shapes of `model`."""
    check_model_name(model)
    expected = KERNEL_SHAPES[model]
    if list(weights) != list(expected):
        raise ValueError(f"{model} weights must have layers {list(expected)}, got {list(weights)}")
    for name, shape in expected.items():
        got = {k: tuple(np.shape(v)) for k, v in weights[name].items()}
        if got != {"kernel": shape, "bias": (shape[-1],)}:
            raise ValueError(f"{model} layer {name}: expected kernel {shape} and bias "
                             f"{(shape[-1],)}, got {got}")


def model_of(weights: Weights) -> str:
    """Which architecture a set of canonical weights belongs to."""
    for model, shapes in KERNEL_SHAPES.items():
        if list(weights) == list(shapes):
            return model
    raise ValueError(f"weights with layers {list(weights)} match no model")


def to_numpy(weights) -> Weights:
    """A copy of `weights` (any arrays: JAX, TF, NumPy) as float32 NumPy, in canonical order."""
    return {layer: {k: np.asarray(v, dtype=np.float32).copy() for k, v in params.items()}
            for layer, params in weights.items()}


def save_weights(path: str | os.PathLike, weights: Weights) -> Path:
    """Write weights to an .npz file with keys "layer/kernel", "layer/bias" (order preserved),
    atomically: into a temporary file beside it, then renamed over `path`."""
    path = Path(path)
    flat = {f"{layer}/{k}": np.asarray(v) for layer, params in weights.items() for k, v in params.items()}
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **flat)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_weights(path: str | os.PathLike) -> Weights:
    """Read weights written by `save_weights`."""
    weights: Weights = {}
    with np.load(path) as f:
        for key in f.files:
            layer, k = key.split("/")
            weights.setdefault(layer, {})[k] = f[key]
    return weights


def max_abs_diff(a: Weights, b: Weights) -> float:
    """The largest |a - b| over all parameters of two weight sets of the same model."""
    return max(float(np.max(np.abs(np.asarray(a[l][k], np.float64) - np.asarray(b[l][k], np.float64))))
               for l in a for k in a[l])
