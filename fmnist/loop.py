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
from typing import Any, Callable, Iterable

import numpy as np

from fmnist.callbacks import Callback, CallbackList, EarlyStopping
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


def run_epochs(state, epochs: int, groups_of_epoch: Callable[[int], Iterable[Any]],
               steps_per_epoch: int, run_steps: Callable, count_of: Callable[[Any], int],
               validate: Callable[[Any], tuple[float, float]] | None = None,
               callbacks: list[Callback] | CallbackList = (), config=None):
    """The loop itself: epochs of step groups, running means, validation, callbacks, history rows.

    `groups_of_epoch(e)` yields what `run_steps(state, group) -> (state, losses, corrects)` takes;
    `count_of(group)` is the number of examples in a group (each step's loss is a batch mean).
    `validate(state) -> (val_loss, val_accuracy)` runs after every epoch when given.
    Returns (state, rows), one row per epoch run.
    """
    callbacks = callbacks if isinstance(callbacks, CallbackList) else CallbackList(callbacks)
    rows = []
    callbacks.on_train_begin(config if config is not None else _Epochs(epochs))
    for epoch in range(epochs):
        start = time.perf_counter()
        callbacks.on_epoch_begin(epoch, steps_per_epoch)
        running, done = RunningMean(), 0
        for group in groups_of_epoch(epoch):
            state, losses, corrects = run_steps(state, group)
            losses, corrects = np.atleast_1d(np.asarray(losses, np.float64)), np.atleast_1d(np.asarray(corrects))
            count = count_of(group)
            running.update(float(np.sum(losses)) * count / len(losses), int(np.sum(corrects)), count)
            done += len(losses)
            callbacks.on_batch_end(done, running.result())
        row = {"epoch": epoch + 1, **running.result()}
        if validate is not None:
            row["val_loss"], row["val_accuracy"] = (float(v) for v in validate(state))
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        callbacks.on_epoch_end(epoch, row)
        if callbacks.stop_training:
            break
    return state, rows


class _Epochs:
    """Stands in for a TrainConfig when a loop is driven without one (the post's `train`)."""

    def __init__(self, epochs: int):
        self.epochs = epochs


def fit(config: TrainConfig, splits: Splits, state, run_steps: RunSteps, evaluate: Evaluate,
        callbacks: list[Callback] | CallbackList = ()):
    """Train on `splits` for `config.epochs` epochs in the shared batch order; return (state, rows).

    Each call of `run_steps` gets a (K, B) index array into `splits.x_train`, K <= steps_per_call.
    """
    loader = train_loader(config, splits)
    validate = None
    if len(splits.x_val):
        validate = lambda state: evaluate(state, splits.x_val, splits.y_val)  # noqa: E731
    if config.early_stopping_patience:  # Keras's run honours it with keras.callbacks.EarlyStopping
        given = callbacks.callbacks if isinstance(callbacks, CallbackList) else list(callbacks)
        monitor = "val_loss" if validate else "loss"
        callbacks = CallbackList([*given, EarlyStopping(monitor, config.early_stopping_patience)])
    return run_epochs(
        state, config.epochs,
        groups_of_epoch=lambda e: step_groups(loader.batch_indices(e), config.steps_per_call),
        steps_per_epoch=len(loader), run_steps=run_steps, count_of=lambda group: group.size,
        validate=validate, callbacks=callbacks, config=config)


def finish(callbacks, test_loss: float, test_accuracy: float) -> dict:
    """Tell the callbacks training is over, with the test results; return those results."""
    callbacks = callbacks if isinstance(callbacks, CallbackList) else CallbackList(callbacks)
    logs = {"test_loss": float(test_loss), "test_accuracy": float(test_accuracy)}
    callbacks.on_train_end(logs)
    return logs
