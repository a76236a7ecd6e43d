"""The two Fashion-MNIST architectures, and conversion to and from the canonical weights format.

Both models take float32 NHWC images (N, 28, 28, 1) already scaled to [0, 1]
(`fmnist.data.preprocess`) and return LOGITS, shape (N, 10). Unlike the post's network they
contain neither `rescale_image` nor `softmax`: scaling happens once in NumPy so all three
implementations see bit-identical inputs, and the loss works on logits because that is stable
(see `handrolled.losses`). Apply `handrolled.softmax` to the output for probabilities.

    mlp: Flatten, Linear 784->128, relu, Linear 128->10
    cnn: Conv 3x3x32 SAME, relu, MaxPool 2/2, Conv 3x3x64 SAME, relu, MaxPool 2/2,
         Flatten (NHWC order, 7*7*64 = 3136), Linear 3136->128, relu, Linear 128->10

The parametrised layers are, in call order, the entries of `fmnist.weights.KERNEL_SHAPES`
(conv_0, conv_1, dense_0, dense_1), so `to_weights`/`from_weights` move weights between this
implementation, Flax and Keras without any transposes.
"""

from __future__ import annotations

import numpy as np

from fmnist import weights as fw
from handrolled.functional import relu
from handrolled.layers import Conv2D, Flatten, Linear, MaxPool2D, Sequential

__all__ = ["mlp", "cnn", "build_model", "from_weights", "to_weights"]


def _mlp_layers(w: fw.Weights, conv_impls: tuple[str, str], pool_impl: str) -> Sequential:
    del conv_impls, pool_impl  # no convolutions, no pooling
    return Sequential(
        Flatten(),
        Linear.from_params(w["dense_0"]["kernel"], w["dense_0"]["bias"]),
        relu,
        Linear.from_params(w["dense_1"]["kernel"], w["dense_1"]["bias"]),
    )


def _cnn_layers(w: fw.Weights, conv_impls: tuple[str, str], pool_impl: str) -> Sequential:
    conv_0_impl, conv_1_impl = conv_impls
    return Sequential(
        Conv2D.from_params(w["conv_0"]["kernel"], w["conv_0"]["bias"], padding="SAME", impl=conv_0_impl),
        relu,
        MaxPool2D(2, 2, impl=pool_impl),
        Conv2D.from_params(w["conv_1"]["kernel"], w["conv_1"]["bias"], padding="SAME", impl=conv_1_impl),
        relu,
        MaxPool2D(2, 2, impl=pool_impl),
        Flatten(),
        Linear.from_params(w["dense_0"]["kernel"], w["dense_0"]["bias"]),
        relu,
        Linear.from_params(w["dense_1"]["kernel"], w["dense_1"]["bias"]),
    )


_BUILDERS = {"mlp": _mlp_layers, "cnn": _cnn_layers}


def build_model(name: str, init: str = "he_normal", seed: int = 0, *, fast: bool = False) -> Sequential:
    """A freshly initialised model: from_weights(name, fmnist.weights.init_weights(name, init, seed)).

    Going through the canonical weights means the same (name, init, seed) gives bit-identical
    starting weights here, in Flax, NNX and Keras.
    """
    return from_weights(name, fw.init_weights(name, init, seed), fast=fast)


def from_weights(model_name: str, weights: fw.Weights, conv_impl: str = "lax",
                 pool_impl: str = "reshape", *, fast: bool = False) -> Sequential:
    """The `model_name` ("mlp" or "cnn") network holding `weights` (canonical format, checked).

    Arrays are converted with `jnp.asarray`, keeping their dtype and bits (float32 expected).
    `conv_impl` ("lax", "im2col") and `pool_impl` ("reshape", "reduce_window") pick how Conv2D and
    MaxPool2D compute (`handrolled.conv`); `fast=True` picks the fast path's layers instead (the
    shift convolution for conv_0, the first-max pool). The weights mean the same either way.
    """
    fw.check_weights(model_name, weights)
    if fast:  # the shift conv pays off for one input channel (conv_0) only
        return _BUILDERS[model_name](weights, ("shift", "lax"), "first_max")
    return _BUILDERS[model_name](weights, (conv_impl, conv_impl), pool_impl)


def to_weights(model: Sequential) -> fw.Weights:
    """Canonical weights of `model`: {"conv_0": {"kernel", "bias"}, ..., "dense_1": {...}} as NumPy.

    Conv2D layers are named conv_0, conv_1, ... and Linear layers dense_0, dense_1, ..., each
    in call order; convs come first in the dict, as in `fmnist.weights.KERNEL_SHAPES`. The
    arrays are copied bit for bit (`np.array`), so `from_weights(to_weights(m))` is exact.
    Raises ValueError if the result matches neither architecture.
    """
    convs, denses = {}, {}
    for layer in model.layers:
        if isinstance(layer, Conv2D):
            convs[f"conv_{len(convs)}"] = {"kernel": np.array(layer.w), "bias": np.array(layer.b)}
        elif isinstance(layer, Linear):
            denses[f"dense_{len(denses)}"] = {"kernel": np.array(layer.w), "bias": np.array(layer.b)}
    weights = {**convs, **denses}
    fw.check_weights(fw.model_of(weights), weights)
    return weights


def mlp(init: str = "he_normal", seed: int = 0) -> Sequential:
    """The MLP (Flatten, Linear 784->128, relu, Linear 128->10), freshly initialised: build_model("mlp", ...)."""
    return build_model("mlp", init, seed)


def cnn(init: str = "he_normal", seed: int = 0, conv_impl: str = "lax", pool_impl: str = "reshape") -> Sequential:
    """The CNN (two Conv 3x3 SAME + relu + MaxPool 2/2 blocks, then 3136->128->10), freshly initialised."""
    return from_weights("cnn", fw.init_weights("cnn", init, seed), conv_impl, pool_impl)
