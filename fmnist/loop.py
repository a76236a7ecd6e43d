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

Runs that survive: given a checkpoint directory, `fit` first restores the last epoch saved there
(`fmnist.checkpoints.Checkpointer`, Orbax) (state and history rows) and continues from the next epoch; after every epoch it saves
the state and the rows. Epoch e's batches depend only on (seed, e), so a resumed run computes
exactly what the uninterrupted one would have. A non-finite training loss raises `NonFiniteLoss`
(unless `config.terminate_on_nan` is off), as Keras's `TerminateOnNaN` stops `fit`.
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


class NonFiniteLoss(ArithmeticError):
    """Training stopped at the first NaN or infinite batch loss (`epoch` and `step` are 1-based)."""

    def __init__(self, epoch: int, step: int, loss: float):
        super().__init__(f"training loss is {loss} at epoch {epoch}, step {step}: stopped "
                         "(the learning rate may be too high; --no-terminate-on-nan trains on)")
        self.epoch, self.step, self.loss = epoch, step, loss


def check_finite(losses: np.ndarray, epoch: int, steps_before: int) -> None:
    """Raise NonFiniteLoss for the first non-finite entry of one call's batch `losses`."""
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        raise NonFiniteLoss(epoch + 1, steps_before + int(bad[0]) + 1, float(losses[bad[0]]))


def run_epochs(state, epochs: int, groups_of_epoch: Callable[[int], Iterable[Any]],
               steps_per_epoch: int, run_steps: Callable, count_of: Callable[[Any], int],
               validate: Callable[[Any], tuple[float, float]] | None = None,
               callbacks: list[Callback] | CallbackList = (), config=None, done_rows=(),
               save: Callable[[int, Any, list], None] | None = None, terminate_on_nan: bool = True):
    """The loop itself: epochs of step groups, running means, validation, callbacks, history rows.

    `groups_of_epoch(e)` yields what `run_steps(state, group) -> (state, losses, corrects)` takes;
    `count_of(group)` is the number of examples in a group (each step's loss is a batch mean).
    `validate(state) -> (val_loss, val_accuracy)` runs after every epoch when given.
    `done_rows` are the rows of epochs already trained (a resumed run starts after them);
    `save(epoch, state, rows)` runs after every epoch, before the callbacks hear of it.
    Returns (state, rows), one row per epoch, `done_rows` included.
    """
    callbacks = callbacks if isinstance(callbacks, CallbackList) else CallbackList(callbacks)
    rows = list(done_rows)
    callbacks.on_train_begin(config if config is not None else _Epochs(epochs))
    for cb in callbacks.callbacks:  # e.g. EarlyStopping's patience count, as if never interrupted
        if hasattr(cb, "replay"):
            cb.replay(rows)
    for epoch in range(len(rows), epochs):
        if callbacks.stop_training:
            break
        start = time.perf_counter()
        callbacks.on_epoch_begin(epoch, steps_per_epoch)
        running, done = RunningMean(), 0
        for group in groups_of_epoch(epoch):
            state, losses, corrects = run_steps(state, group)
            losses, corrects = np.atleast_1d(np.asarray(losses, np.float64)), np.atleast_1d(np.asarray(corrects))
            if terminate_on_nan:
                check_finite(losses, epoch, done)
            count = count_of(group)
            running.update(float(np.sum(losses)) * count / len(losses), int(np.sum(corrects)), count)
            done += len(losses)
            callbacks.on_batch_end(done, running.result())
        row = {"epoch": epoch + 1, **running.result()}
        if validate is not None:
            row["val_loss"], row["val_accuracy"] = (float(v) for v in validate(state))
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        if save is not None:
            save(epoch + 1, state, rows)
        callbacks.on_epoch_end(epoch, row)
    return state, rows


class _Epochs:
    """Stands in for a TrainConfig when a loop is driven without one (the post's `train`)."""

    def __init__(self, epochs: int):
        self.epochs = epochs


def fit(config: TrainConfig, splits: Splits, state, run_steps: RunSteps, evaluate: Evaluate,
        callbacks: list[Callback] | CallbackList = (), checkpoint_dir=None, to_saved=None, from_saved=None):
    """Train on `splits` for `config.epochs` epochs in the shared batch order; return (state, rows).

    Each call of `run_steps` gets a (K, B) index array into `splits.x_train`, K <= steps_per_call.
    With `checkpoint_dir`, training resumes after the last epoch saved there and saves after every
    epoch (`fmnist.checkpoints.Checkpointer`); `to_saved(state)` is the pytree of arrays saved
    (default: the state itself) and `from_saved(state, saved)` puts a restored one back.
    """
    if checkpoint_dir is None:
        return _fit(config, splits, state, run_steps, evaluate, callbacks)
    from fmnist.checkpoints import Checkpointer

    to_saved = to_saved or (lambda s: s)
    from_saved = from_saved or (lambda s, saved: saved)
    checkpoint = Checkpointer(checkpoint_dir)
    try:
        done_rows = []
        restored = checkpoint.restore(like=to_saved(state))
        if restored is not None:
            saved, _, done_rows = restored
            state = from_saved(state, saved)
        return _fit(config, splits, state, run_steps, evaluate, callbacks, done_rows,
                    save=lambda epoch, state, rows: checkpoint.save(epoch, to_saved(state), rows))
    finally:  # also on Ctrl-C or a non-finite loss: the last epoch's save completes
        checkpoint.close()


def _fit(config, splits, state, run_steps, evaluate, callbacks, done_rows=(), save=None):
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
        validate=validate, callbacks=callbacks, config=config, done_rows=done_rows, save=save,
        terminate_on_nan=config.terminate_on_nan)


def one_step_at_a_time(train_step: Callable, x_train: np.ndarray, y_train: np.ndarray) -> RunSteps:
    """The readable `run_steps`: for each row of `batches`, gather the batch on the host and call
    `train_step(state, images, labels) -> (state, loss, correct)` (a compiled step) on it."""
    def run_steps(state, batches):
        losses, corrects = [], []
        for idx in batches:
            state, loss, correct = train_step(state, x_train[idx], y_train[idx])
            losses.append(loss)
            corrects.append(correct)
        return state, np.asarray(losses), np.asarray(corrects)
    return run_steps


def finish(callbacks, test_loss: float, test_accuracy: float) -> dict:
    """Tell the callbacks training is over, with the test results; return those results."""
    callbacks = callbacks if isinstance(callbacks, CallbackList) else CallbackList(callbacks)
    logs = {"test_loss": float(test_loss), "test_accuracy": float(test_accuracy)}
    callbacks.on_train_end(logs)
    return logs


def evaluate_in_padded_batches(batch_sums, x: np.ndarray, y: np.ndarray, batch_size: int):
    """(mean loss, accuracy) over every example of (x, y), from `batch_sums(xb, yb, mask) ->
    (sum of the losses where mask, number correct where mask)` on batches of `batch_size`.

    The partial last batch is padded with zeros to `batch_size` and masked, so one compiled shape
    serves every batch; the per-batch sums are added in float64 on the host. (nan, nan) for no examples.
    """
    n = len(x)
    if n == 0:
        return float("nan"), float("nan")
    batch_size = min(batch_size, n)
    loss_sum, correct = 0.0, 0
    for start in range(0, n, batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        mask = np.ones(batch_size, bool)
        if len(xb) < batch_size:  # padded rows are masked out
            pad = batch_size - len(xb)
            mask[len(xb):] = False
            xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
            yb = np.concatenate([yb, np.zeros(pad, yb.dtype)])
        s, c = batch_sums(xb, yb, mask)
        loss_sum += float(s)
        correct += int(c)
    return loss_sum / n, correct / n
