"""The Keras callbacks `keras_baseline.train.train_and_evaluate` hands to `model.fit`, and its history rows.

`EpochTimer` times each epoch; `FmnistCallbacks` makes the project callbacks' calls from inside
`fit`; `StopOnNonFiniteLoss` stops at a NaN loss as the JAX loop does; `EpochCheckpoint` saves
Keras's state after every epoch; `ResumedEarlyStopping` is Keras's `EarlyStopping` that counts a
resumed run's earlier epochs. `epoch_row` turns Keras's epoch logs into a row of the fmnist history.
"""

from __future__ import annotations

import time

import numpy as np

from fmnist import callbacks as fmnist_callbacks
from fmnist.config import TrainConfig
from fmnist.loop import NonFiniteLoss
from keras_baseline import checkpoint, import_keras
from keras_baseline.verbosity import wants_batches

keras = import_keras()


class EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch, validation included (as in the JAX loop's `seconds`)."""

    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


class FmnistCallbacks(keras.callbacks.Callback):
    """Calls project callbacks (`fmnist.callbacks.Callback`) from inside `fit`.

    They get the same calls as in the JAX loop: `on_epoch_end` receives the epoch's row in the
    fmnist schema, and a callback that sets `stop_training` stops `fit` after that epoch.
    `on_batch_end` is only forwarded when some callback overrides it: turning Keras's batch logs into
    floats waits for every step to finish, which costs time for nothing otherwise.
    """

    def __init__(self, callbacks, config: TrainConfig, num_steps: int, timer: EpochTimer, done_rows=()):
        super().__init__()
        self.callbacks = fmnist_callbacks.CallbackList(callbacks)
        self.config, self.num_steps, self.timer = config, num_steps, timer
        self.wants_batches = wants_batches(self.callbacks.callbacks)
        self.done_rows = list(done_rows)

    def on_train_begin(self, logs=None):
        self.callbacks.on_train_begin(self.config)
        for cb in self.callbacks.callbacks:  # a resumed run's earlier epochs (as fmnist.loop does)
            if hasattr(cb, "replay"):
                cb.replay(self.done_rows)

    def on_epoch_begin(self, epoch, logs=None):
        self.callbacks.on_epoch_begin(epoch, self.num_steps)

    def on_train_batch_end(self, batch, logs=None):
        if self.wants_batches:
            self.callbacks.on_batch_end(batch + 1, {k: float(logs[k]) for k in ("loss", "accuracy")})

    def on_epoch_end(self, epoch, logs=None):
        self.callbacks.on_epoch_end(epoch, epoch_row(epoch, logs, self.timer.seconds[-1]))
        if self.callbacks.stop_training:
            self.model.stop_training = True


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stop `fit` at the first batch whose loss is NaN or infinite, then raise
    `fmnist.loop.NonFiniteLoss` as the JAX loop does.

    Checks what Keras's `TerminateOnNaN` checks (logs["loss"], the epoch's running mean, non-finite
    from the first non-finite batch on) and stops the same way (`model.stop_training`); the error
    is raised from `on_epoch_end`, which Keras still calls for the stopped epoch, and this callback
    comes first, so no later callback saves or reports that epoch.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self.found = None

    def on_train_batch_end(self, batch, logs=None):
        loss = float(logs["loss"])
        if self.found is None and not np.isfinite(loss):
            self.found, self.model.stop_training = (batch + 1, loss), True

    def on_epoch_end(self, epoch, logs=None):
        if self.found is not None:
            raise NonFiniteLoss(epoch + 1, *self.found)


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch: the model's and optimizer's variables and the rows so far, to disk."""

    def __init__(self, directory, timer: EpochTimer, done_rows=()):
        super().__init__()
        self.directory, self.timer, self.rows = directory, timer, list(done_rows)

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append(epoch_row(epoch, logs, self.timer.seconds[-1]))
        checkpoint.save(self.directory, self.model, epoch + 1, self.rows)


class ResumedEarlyStopping(keras.callbacks.EarlyStopping):
    """`keras.callbacks.EarlyStopping` that, in a resumed run, first counts the earlier epochs."""

    def __init__(self, done_rows=(), **kwargs):
        super().__init__(**kwargs)
        self.done_rows = list(done_rows)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for epoch, row in enumerate(self.done_rows):
            super().on_epoch_end(epoch, row)


def epoch_row(epoch: int, logs: dict, seconds: float) -> dict:
    """One epoch of Keras's logs as a row of the fmnist history (1-based `epoch`)."""
    row = {"epoch": epoch + 1}
    row.update({k: float(logs[k]) for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in logs})
    row["seconds"] = seconds
    return row
