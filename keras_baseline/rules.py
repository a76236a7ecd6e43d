"""What Keras cannot run, checked without importing Keras (so a refusal costs no TensorFlow start-up).

`check(config)` is shared by both Keras backends (`--impl keras` and `--impl keras-jax`).
"""

from __future__ import annotations

from fmnist.config import TrainConfig


def check(config: TrainConfig) -> None:
    """Raise ValueError if Keras cannot train `config`: its Adam has only the epsilon-hat form, and it
    trains on one device here (Keras's own `keras.distribution` is not wired in)."""
    if config.devices != 1:
        raise ValueError(f"--devices {config.devices}: Keras trains on one device here; data parallel "
                         "training is for the JAX implementations (handrolled, flax, nnx: "
                         "`fmnist compare --impls handrolled flax nnx --devices N`)")
    if config.optimizer == "adam" and config.adam_convention != "keras":
        raise ValueError(
            f"Keras's Adam implements only the epsilon-hat ('keras') convention, not "
            f"{config.adam_convention!r}; use --adam-convention keras "
            "(TrainConfig(adam_convention='keras')) to run Keras.")
