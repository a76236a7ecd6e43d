"""What a run produces, in one schema for every implementation (`fmnist.app.rundir.save_run` writes it).

`DIR/history.json`:

    {"impl": "flax", "config": {...TrainConfig...},
     "epochs": [{"epoch": 1, "loss": .., "accuracy": .., "val_loss": .., "val_accuracy": ..,
                 "seconds": ..}, ...],
     "test_loss": .., "test_accuracy": .., "versions": {"jax": "0.10.2", ...}}

`DIR/weights.npz`: the final parameters in the canonical format (`fmnist.weights`).
`DIR/curves.png`: loss and accuracy per epoch, train and validation.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
from importlib import metadata

from fmnist.config import TrainConfig
from fmnist.weights import Weights

EPOCH_KEYS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds")


@dataclasses.dataclass
class RunResult:
    """The outcome of `train_and_evaluate` in any implementation."""

    impl: str
    config: TrainConfig
    epochs: list[dict]          # one row per epoch, keys EPOCH_KEYS
    test_loss: float
    test_accuracy: float
    weights: Weights            # final parameters, canonical format

    def to_json(self) -> dict:
        return {"impl": self.impl, "config": self.config.to_dict(),
                "epochs": [{k: row[k] for k in EPOCH_KEYS if k in row} for row in self.epochs],
                "test_loss": float(self.test_loss), "test_accuracy": float(self.test_accuracy),
                "versions": versions(self.impl)}

    @property
    def seconds_per_epoch(self) -> float:
        """Median wall time of an epoch, leaving out the first when there are others: in every
        implementation the first epoch also pays for compiling (JAX) or tracing (Keras)."""
        times = [row["seconds"] for row in self.epochs]
        return statistics.median(times[1:] if len(times) > 1 else times)


def versions(impl: str) -> dict:
    """Versions of the packages a run of `impl` depended on."""
    names = {"handrolled": ["jax", "jaxlib"], "flax": ["jax", "jaxlib", "flax", "optax"],
             "nnx": ["jax", "jaxlib", "flax", "optax"], "keras": ["tensorflow-cpu", "keras"],
             "keras-jax": ["jax", "jaxlib", "keras"]}.get(impl, [])
    found = {"python": sys.version.split()[0], "numpy": metadata.version("numpy")}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found
