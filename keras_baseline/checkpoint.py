"""Keras's training state on disk after every epoch, so `fmnist train --resume` continues exactly.

What is saved is Keras's own state, nothing reconstructed: the model's variables
(`model.get_weights()`, every layer's kernel and bias in order) and the optimizer's
(`model.optimizer.variables`: the step count `iterations`, the learning rate, Adam's m and v), plus
the epoch reached and the history rows so far. One `.npz`, written to a temporary file and renamed,
so a run killed at any instant leaves the last finished epoch. It works on both backends
(TensorFlow and JAX). `keras.callbacks.BackupAndRestore` saves the same variables, but writes
them in place (not atomically) and removes them when training ends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

FILE = "keras_state.npz"


def save(directory: str | Path, model, epoch: int, rows: list[dict]) -> None:
    """Write `model`'s and its optimizer's variables, `epoch` (1-based) and `rows` atomically."""
    from fmnist import jsonio

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {f"model_{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    arrays |= {f"optimizer_{i}": np.asarray(v) for i, v in enumerate(model.optimizer.variables)}
    progress = jsonio.dumps({"epoch": epoch, "rows": rows}, indent=None)
    tmp = directory / f".{FILE}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, progress=np.array(progress), **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / FILE)


def restore(directory: str | Path, model) -> tuple[int, list[dict]] | None:
    """Load the saved state into `model` (compiled, same architecture); return (epoch, rows), or
    None when nothing is saved. A damaged file raises ValueError with one line."""
    path = Path(directory) / FILE
    if not path.exists():
        return None
    try:
        with np.load(path) as saved:
            progress = json.loads(str(saved["progress"]))
            model_vars = [saved[f"model_{i}"] for i in range(len(model.get_weights()))]
            model.optimizer.build(model.trainable_variables)
            optimizer_vars = [saved[f"optimizer_{i}"] for i in range(len(model.optimizer.variables))]
    except Exception as e:  # zip, npz, JSON and key errors alike: the user needs one line
        raise ValueError(f"the Keras checkpoint {path} cannot be restored ({type(e).__name__}: {e}); "
                         "delete it to start over, or --overwrite") from None
    model.set_weights(model_vars)
    for variable, value in zip(model.optimizer.variables, optimizer_vars):
        variable.assign(value)
    return progress["epoch"], progress["rows"]
