"""The epoch loop shared by the two JAX implementations, free of any framework.

What is framework-specific, the training step, is passed in. This loop owns what must mean the
same thing everywhere: the batch order (`fmnist.data.Dataloader`), the running metrics
(`fmnist.metrics.RunningMean`), validation every epoch, the callbacks and the history rows.

    run_steps(state, batches) -> (state, losses, corrects)
        `batches` is an int array (K, B) of example indices: K training steps of batch size B,
        applied in order. It returns the K mean batch losses (computed before each update) and
        the K numbers of correct predictions. An implementation compiles the K steps into one
        call (a `lax.scan`), so the host synchronises once per K steps, not once per step; the
        progress bar is redrawn between calls.
    evaluate(state, x, y) -> (mean loss, accuracy) over every example of (x, y).

The epoch's full batches are cut into calls of `config.steps_per_call` steps; the remainder and the
partial last batch (when the set size is not a multiple of B) each go in a call of their own, so
every example of the epoch is used once, as in Keras's `fit`.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from fmnist.callbacks import Callback, CallbackList
from fmnist.config import TrainConfig
from fmnist.data import Dataloader, Dataset, Splits
from fmnist.metrics import RunningMean

RunSteps = Callable[[Any, np.ndarray], tuple[Any, Any, Any]]
Evaluate = Callable[[Any, np.ndarray, np.ndarray], tuple[float, float]]


def train_loader(config: TrainConfig, splits: Splits) -> Dataloader:
    """The one shuffled, seeded batch order of the training set that all implementations follow."""
    return Dataloader(Dataset(splits.x_train, splits.y_train), batchsize=config.batch_size,
                      shuffle=True, seed=config.seed)


def step_groups(batches: list[np.ndarray], steps_per_call: int) -> list[np.ndarray]:
    """Group an epoch's batches into (K, B) index arrays of equal batch size, at most K per group."""
    groups, i = [], 0
    while i < len(batches):
        size = len(batches[i])
        j = i
        while j < len(batches) and j - i < steps_per_call and len(batches[j]) == size:
            j += 1
        groups.append(np.stack(batches[i:j]).astype(np.int32))
        i = j
    return groups


def fit(config: TrainConfig, splits: Splits, state, run_steps: RunSteps, evaluate: Evaluate,
        callbacks: list[Callback] | CallbackList = ()):
    """Train for `config.epochs` epochs (fewer if a callback stops it); return (state, epoch rows)."""
    callbacks = callbacks if isinstance(callbacks, CallbackList) else CallbackList(callbacks)
    loader = train_loader(config, splits)
    rows = []
    callbacks.on_train_begin(config)
    for epoch in range(config.epochs):
        start = time.perf_counter()
        callbacks.on_epoch_begin(epoch, len(loader))
        running, done = RunningMean(), 0
        for group in step_groups(loader.batch_indices(epoch), config.steps_per_call):
            state, losses, corrects = run_steps(state, group)
            losses, corrects = np.asarray(losses, np.float64), np.asarray(corrects)
            running.update(float(np.sum(losses)) * group.shape[1], int(np.sum(corrects)),
                           group.size)
            done += len(group)
            callbacks.on_batch_end(done, running.result())
        row = {"epoch": epoch + 1, **running.result()}
        if len(splits.x_val):
            row["val_loss"], row["val_accuracy"] = evaluate(state, splits.x_val, splits.y_val)
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        callbacks.on_epoch_end(epoch, row)
        if callbacks.stop_training:
            break
    return state, rows


def finish(callbacks, test_loss: float, test_accuracy: float) -> dict:
    """Tell the callbacks training is over, with the test results; return those results."""
    callbacks = callbacks if isinstance(callbacks, CallbackList) else CallbackList(callbacks)
    logs = {"test_loss": float(test_loss), "test_accuracy": float(test_accuracy)}
    callbacks.on_train_end(logs)
    return logs
