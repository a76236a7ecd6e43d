"""The fast path's layers as NNX modules: `ShiftConv` and `fast_layers(model_name)`.

`from_weights(name, weights, **fast_layers(name))` is the architecture of `nnx_impl.models` with the
CNN's first convolution computed as shifted slices and its pools as the first-max pool
(`fmnist.fastpath.layers`), the same functions the linen and hand-rolled fast paths use, so the
three compile to the same program and train bit-identically.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from fmnist.fastpath.layers import max_pool_2x2, shift_conv_3x3


class ShiftConv(nnx.Module):
    """`nnx.Conv(in_features, out_features, (3, 3), padding="SAME")` with the same parameters
    ("kernel" HWIO, "bias"), computed by `fmnist.fastpath.layers.shift_conv_3x3`."""

    def __init__(self, in_features: int, out_features: int, kernel_size=(3, 3), padding: str = "SAME", *,
                 rngs: nnx.Rngs):
        if tuple(kernel_size) != (3, 3) or padding != "SAME":
            raise ValueError(f"ShiftConv computes 3x3 SAME convolutions only, got {kernel_size}, {padding}")
        self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (3, 3, in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,)))

    def __call__(self, x):
        return shift_conv_3x3(x, self.kernel[...]) + self.bias[...]


def fast_layers(model_name: str) -> dict:
    """The `build_model`/`from_weights` keywords that give `model_name` the fast path's layers ({} for the MLP)."""
    return {"first_conv": ShiftConv, "pool": max_pool_2x2} if model_name == "cnn" else {}
