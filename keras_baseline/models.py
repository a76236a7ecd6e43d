"""The two architectures as `keras.Sequential` models, and weights in and out in the canonical format.

Backend-agnostic: the same code on TensorFlow (`--impl keras`) and on JAX (`--impl keras-jax`).

Layers carry the canonical names of `fmnist.weights` ("conv_0", "conv_1", "dense_0", "dense_1"), so
copying weights is by name, never by position. The models output logits; the loss is compiled with
`from_logits=True` (a softmax layer plus `from_logits=False` would clip probabilities at 1e-7 in
some cases and zero the gradient of confidently wrong samples).

Keras initialises Dense and Conv2D kernels with `glorot_uniform` (and biases with zeros). The
project never relies on that: every run loads the canonical weights drawn by `fmnist.weights`, so
all three implementations start from the same numbers.
"""

from __future__ import annotations

import numpy as np

from fmnist.weights import KERNEL_SHAPES, Weights, check_model_name, check_weights, model_of
from keras_baseline import import_keras  # sets KERAS_BACKEND before keras is imported

keras = import_keras()

BACKENDS = ("tensorflow", "jax")  # --impl keras and --impl keras-jax; the code is the same on both

if keras.backend.backend() not in BACKENDS:
    raise ImportError(f"keras_baseline runs on Keras's TensorFlow or JAX backend, but Keras was started "
                      f"with {keras.backend.backend()!r}; set KERAS_BACKEND=tensorflow (or jax) before "
                      "importing keras.")

INPUT_SHAPE = (28, 28, 1)  # NHWC, as `fmnist.data.preprocess` produces


def build_model(name: str) -> keras.Sequential:
    """An uncompiled, built model: "mlp" (784-128-10) or "cnn" (two 3x3 SAME convs, 2x2 pools, 128, 10)."""
    check_model_name(name)
    if name == "mlp":
        layers = [
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(128, activation="relu", name="dense_0"),
            keras.layers.Dense(10, name="dense_1"),  # logits
        ]
    else:
        layers = [
            # padding="same": Keras defaults to "valid", which would make the flatten 5*5*64, not 7*7*64.
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_0"),
            keras.layers.MaxPooling2D(2, name="pool_0"),  # strides default to pool_size: 28 -> 14
            keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv_1"),
            keras.layers.MaxPooling2D(2, name="pool_1"),  # 14 -> 7
            keras.layers.Flatten(name="flatten"),  # NHWC row-major, the canonical order
            keras.layers.Dense(128, activation="relu", name="dense_0"),
            keras.layers.Dense(10, name="dense_1"),  # logits
        ]
    # keras.Input builds the model at once, so its weights exist before any data is seen.
    return keras.Sequential([keras.Input(INPUT_SHAPE), *layers], name=name)


def from_weights(model_name: str, weights: Weights) -> keras.Sequential:
    """A built, uncompiled `model_name` model holding the canonical `weights` (their shapes are checked)."""
    model = build_model(model_name)
    assign_weights(model, weights)
    return model


def to_weights(model: keras.Model) -> Weights:
    """The model's parameters as canonical weights: float32 NumPy copies, in canonical layer order."""
    weights = {}
    for layer in model.layers:  # Sequential's layers are in call order, which is the canonical order
        if layer.weights:
            kernel, bias = layer.get_weights()
            weights[layer.name] = {"kernel": np.array(kernel, np.float32), "bias": np.array(bias, np.float32)}
    return weights


def assign_weights(model: keras.Model, weights: Weights) -> None:
    """Overwrite the variables of an existing model (compiled or not) with canonical `weights`, by layer name.

    What `from_weights` does to a new model; for reusing one compiled (and traced) model, as the
    parity tests do. The weights are checked against the architecture the model is named after.
    """
    # build_model names the model after its architecture; check the weights against that.
    check_weights(model.name if model.name in KERNEL_SHAPES else model_of(weights), weights)
    for layer_name, params in weights.items():
        # Keras keeps a Dense or Conv2D layer's variables in the order [kernel, bias].
        model.get_layer(layer_name).set_weights([np.asarray(params["kernel"], np.float32),
                                                 np.asarray(params["bias"], np.float32)])
