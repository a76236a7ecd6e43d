"""The callback system the post asked for, shared by the hand-rolled and Flax training loops.

A training loop calls, in order:

    on_train_begin(config)
    for each epoch:  on_epoch_begin(epoch, num_steps)
                     on_batch_end(step, logs)     # step = steps done this epoch; logs = running means
                     on_epoch_end(epoch, logs)    # logs = the epoch's row of the history
    on_train_end(logs)                            # logs = {"test_loss": ..., "test_accuracy": ...}

and stops after the current epoch when any callback sets `stop_training`. Epochs are 0-based in
calls and 1-based in what is printed. (Keras is trained with Keras's own callbacks: it is the
independent reference.)
"""

from __future__ import annotations

import math
import sys

from fmnist.progress import Progbar


class Callback:
    stop_training = False

    def on_train_begin(self, config) -> None: ...
    def on_epoch_begin(self, epoch: int, num_steps: int) -> None: ...
    def on_batch_end(self, step: int, logs: dict) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict) -> None: ...
    def on_train_end(self, logs: dict) -> None: ...


class CallbackList(Callback):
    """Calls every callback in order; `stop_training` is true when any callback asks to stop."""

    def __init__(self, callbacks=()):
        self.callbacks = list(callbacks)

    @property
    def stop_training(self) -> bool:
        return any(cb.stop_training for cb in self.callbacks)

    def on_train_begin(self, config):
        for cb in self.callbacks:
            cb.on_train_begin(config)

    def on_epoch_begin(self, epoch, num_steps):
        for cb in self.callbacks:
            cb.on_epoch_begin(epoch, num_steps)

    def on_batch_end(self, step, logs):
        for cb in self.callbacks:
            cb.on_batch_end(step, logs)

    def on_epoch_end(self, epoch, logs):
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, logs)

    def on_train_end(self, logs):
        for cb in self.callbacks:
            cb.on_train_end(logs)


METRIC_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


class ProgressBar(Callback):
    """Prints `Epoch e/n` and a Keras-style progress line per epoch (see `fmnist.progress`)."""

    def __init__(self, stream=None, interactive: bool | None = None):
        self.stream = stream if stream is not None else sys.stdout
        self.interactive = interactive
        self.num_epochs = None
        self.bar = None

    def on_train_begin(self, config):
        self.num_epochs = getattr(config, "epochs", None)

    def on_epoch_begin(self, epoch, num_steps):
        total = f"/{self.num_epochs}" if self.num_epochs else ""
        self.stream.write(f"Epoch {epoch + 1}{total}\n")
        self.stream.flush()
        self.bar = Progbar(num_steps, self.stream, self.interactive)

    def on_batch_end(self, step, logs):
        self.bar.update(step, {k: logs[k] for k in ("loss", "accuracy") if k in logs})

    def on_epoch_end(self, epoch, logs):
        self.bar.finish({k: logs[k] for k in METRIC_KEYS if k in logs})

    def on_train_end(self, logs):
        if "test_loss" in logs:
            self.stream.write(f"test_loss: {logs['test_loss']:.4f} - "
                              f"test_accuracy: {logs['test_accuracy']:.4f}\n")
            self.stream.flush()


class History(Callback):
    """Collects each epoch's row (`loss`, `accuracy`, `val_loss`, `val_accuracy`, `seconds`)."""

    def __init__(self):
        self.epochs: list[dict] = []

    def on_train_begin(self, config):
        self.epochs = []

    def on_epoch_end(self, epoch, logs):
        self.epochs.append({"epoch": epoch + 1, **logs})


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` epochs.

    Like `keras.callbacks.EarlyStopping` with `restore_best_weights=False`.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 2, min_delta: float = 0.0):
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.mode = -1.0 if "acc" in monitor else 1.0  # lower loss is better, higher accuracy is
        self.best, self.wait, self.stopped_epoch = math.inf, 0, None

    def on_train_begin(self, config):
        self.best, self.wait, self.stopped_epoch, self.stop_training = math.inf, 0, None, False

    def replay(self, rows) -> None:
        """Count the epochs of a resumed run's earlier rows, as if it had never stopped."""
        for epoch, row in enumerate(rows):
            self.on_epoch_end(epoch, row)

    def on_epoch_end(self, epoch, logs):
        value = self.mode * logs[self.monitor]
        if value < self.best - self.min_delta:
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stop_training, self.stopped_epoch = True, epoch
