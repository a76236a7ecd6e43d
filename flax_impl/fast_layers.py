"""The fast path's layers as linen modules: `ShiftConv` and `fast_layers(model_name)`.

`build_model(name, **fast_layers(name))` is the architecture of `flax_impl.models` with the CNN's
first convolution computed as shifted slices and its pools as the first-max pool
(`fmnist.fastpath.layers`): the same parameters and the same values to float32 rounding.
"""

from __future__ import annotations

import flax.linen as nn

from fmnist.fastpath.layers import max_pool_2x2, shift_conv_3x3


class ShiftConv(nn.Module):
    """`nn.Conv(features, (3, 3), padding="SAME")` with the same parameters ("kernel" HWIO, "bias"),
    computed by `fmnist.fastpath.layers.shift_conv_3x3`. Only for few input channels."""

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    padding: str = "SAME"

    @nn.compact
    def __call__(self, x):
        if tuple(self.kernel_size) != (3, 3) or self.padding != "SAME":
            raise ValueError(f"ShiftConv computes 3x3 SAME convolutions only, got {self.kernel_size}, {self.padding}")
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return shift_conv_3x3(x, kernel) + bias


def fast_layers(model_name: str) -> dict:
    """The `build_model` keywords that give `model_name` the fast path's layers ({} for the MLP)."""
    return {"first_conv": ShiftConv, "pool": max_pool_2x2} if model_name == "cnn" else {}
