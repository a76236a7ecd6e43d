"""Training with `model.fit`, as a Keras user would, fed the project's shared batch order.

What is shared with the JAX implementations is only what defines the run: the config, the initial
weights, the preprocessed arrays and the batch order. Everything else is Keras's own: `fit`, its
loss/accuracy bookkeeping, its progress bar, its `EarlyStopping`, `evaluate`.

The batch order. `fit(shuffle=True)` cannot be used: its permutation comes from `tf.random` (nothing
JAX can reproduce) and, once `keras.utils.set_random_seed` is called, it is the *same* permutation
every epoch. Instead one `fit` call trains on a `keras.utils.PyDataset` whose batch i of epoch e is
`fmnist.loop.train_loader(config, splits).batch_indices(e)[i]`, with `shuffle=False` (with a
PyDataset, `shuffle=True` would shuffle the order of the batches). The dataset is told the epoch
by a callback, from Keras's own epoch index; counting `PyDataset.on_epoch_end` calls would be off
by one, because `fit` calls it once before the first epoch (`epoch_iterator.reset()`).

One `fit` for the whole run (instead of one per epoch) keeps Keras's progress line right
("Epoch 3/5", not "Epoch 3/3") and lets `keras.callbacks.EarlyStopping` work as documented: it
resets itself in `on_train_begin`, so across several `fit` calls it would never stop.

Optimizers:
  Adam: Keras implements only the epsilon-hat form ("keras" convention),
        t = iterations + 1; theta -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
  SGD:  Keras: v = momentum * v - lr * g;  theta += v     (momentum = 0: theta -= lr * g)
        optax: t = g + momentum * t;       theta -= lr * t
        By induction v = -lr * t, so the two are equal in exact arithmetic; in float32 they round
        differently (a few ulps per step), which training then amplifies like any other rounding.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from fmnist import callbacks as fmnist_callbacks
from fmnist.config import TrainConfig
from fmnist.data import Dataloader, Splits
from fmnist.history import RunResult
from fmnist.loop import finish, train_loader
from fmnist.weights import Weights
from keras_baseline import import_keras, rules
from keras_baseline.models import build_model, get_weights, set_weights

keras = import_keras()
import tensorflow as tf  # noqa: E402  (already imported by keras; needed for GradientTape)


# --------------------------------------------------------------------------- model and optimizer

def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    """Keras's Adam or SGD with the config's hyper-parameters."""
    rules.check(config)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=config.lr, beta_1=config.b1, beta_2=config.b2,
                                     epsilon=config.adam_eps)
    return keras.optimizers.SGD(learning_rate=config.lr, momentum=config.momentum)


def make_loss() -> keras.losses.Loss:
    """Mean cross-entropy of integer labels, on logits (stable, never clipped)."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def compiled_model(config: TrainConfig, weights: Weights) -> keras.Sequential:
    """`config.model`, loaded with `weights` and compiled with the config's optimizer."""
    model = build_model(config.model)
    set_weights(model, weights)
    model.compile(optimizer=make_optimizer(config), loss=make_loss(), metrics=["accuracy"])
    return model


# --------------------------------------------------------------------------- the shared batch order

class SharedOrderBatches(keras.utils.PyDataset):
    """The training set as `fit` sees it: batch i of epoch e is `loader.batch_indices(e)[i]`.

    The last batch is partial when the set size is not a multiple of the batch size, as with
    arrays in `fit`. `fit` must be given `shuffle=False` and an `EpochSetter` callback.
    """

    def __init__(self, loader: Dataloader):
        super().__init__()  # workers=1, no multiprocessing: batches are made in order, in this process
        self.loader = loader
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.batches = self.loader.batch_indices(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        return self.loader.dataset[self.batches[i]]


class EpochSetter(keras.callbacks.Callback):
    """Points a `SharedOrderBatches` at Keras's current epoch before the epoch's batches are read."""

    def __init__(self, dataset: SharedOrderBatches):
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch, logs=None):
        self.dataset.set_epoch(epoch)


# --------------------------------------------------------------------------- callbacks

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

    def __init__(self, callbacks, config: TrainConfig, num_steps: int, timer: EpochTimer):
        super().__init__()
        self.callbacks = fmnist_callbacks.CallbackList(callbacks)
        self.config, self.num_steps, self.timer = config, num_steps, timer
        self.wants_batches = any(type(cb).on_batch_end is not fmnist_callbacks.Callback.on_batch_end
                                 for cb in self.callbacks.callbacks)

    def on_train_begin(self, logs=None):
        self.callbacks.on_train_begin(self.config)

    def on_epoch_begin(self, epoch, logs=None):
        self.callbacks.on_epoch_begin(epoch, self.num_steps)

    def on_train_batch_end(self, batch, logs=None):
        if self.wants_batches:
            self.callbacks.on_batch_end(batch + 1, {k: float(logs[k]) for k in ("loss", "accuracy")})

    def on_epoch_end(self, epoch, logs=None):
        self.callbacks.on_epoch_end(epoch, epoch_row(epoch, logs, self.timer.seconds[-1]))
        if self.callbacks.stop_training:
            self.model.stop_training = True


def epoch_row(epoch: int, logs: dict, seconds: float) -> dict:
    """One epoch of Keras's logs as a row of the fmnist history (1-based `epoch`)."""
    row = {"epoch": epoch + 1}
    row.update({k: float(logs[k]) for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in logs})
    row["seconds"] = seconds
    return row


def keras_verbosity(callbacks) -> tuple[int, object, list]:
    """Keras's `verbose`, the stream to print to, and the project callbacks to forward.

    A `fmnist.callbacks.ProgressBar` among `callbacks` means "show progress": Keras then prints its
    own bar to that ProgressBar's stream (verbose=1, redrawn in place, on a terminal; verbose=2, one
    line per epoch, otherwise), and the project's bar is not forwarded, so nothing prints twice.
    """
    bars = [cb for cb in callbacks if isinstance(cb, fmnist_callbacks.ProgressBar)]
    others = [cb for cb in callbacks if not isinstance(cb, fmnist_callbacks.ProgressBar)]
    if not bars:
        return 0, None, others
    stream, interactive = bars[0].stream, bars[0].interactive
    if interactive is None:
        interactive = hasattr(stream, "isatty") and stream.isatty()
    return (1 if interactive else 2), stream, others


# --------------------------------------------------------------------------- training

def train_and_evaluate(config: TrainConfig, splits: Splits, initial_weights: Weights,
                       callbacks=()) -> RunResult:
    """Train `config.model` from `initial_weights` with `model.fit`, then evaluate on the test set.

    `callbacks` are project callbacks (`fmnist.callbacks`); see `FmnistCallbacks` and
    `keras_verbosity`. `config.early_stopping_patience` adds `keras.callbacks.EarlyStopping` on
    val_loss (loss when there is no validation set). A project `EarlyStopping` passed in as well is still forwarded; it applies the same
    rule (stop after `patience` epochs without a strictly lower val_loss), so both stop together.
    """
    # Seeds Python's `random`, NumPy's global state, TF and Keras: a side effect on the caller's global
    # RNGs, harmless here (the project draws from explicit `np.random.default_rng`s), but note it.
    keras.utils.set_random_seed(config.seed)
    model = compiled_model(config, initial_weights)
    verbose, stream, forwarded = keras_verbosity(callbacks)

    batches = SharedOrderBatches(train_loader(config, splits))
    timer = EpochTimer()
    keras_callbacks = [EpochSetter(batches), timer,
                       FmnistCallbacks(forwarded, config, len(batches), timer)]
    validation = (splits.x_val, splits.y_val) if len(splits.x_val) else None
    if config.early_stopping_patience:  # the same rule as fmnist.loop.fit for the JAX implementations
        keras_callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss" if validation else "loss", patience=config.early_stopping_patience))

    # Keras prints to sys.stdout; send it where the caller's progress bar would have written.
    with contextlib.redirect_stdout(stream) if stream is not None else contextlib.nullcontext():
        history = model.fit(batches, epochs=config.epochs, shuffle=False, validation_data=validation,
                            validation_batch_size=config.eval_batch_size, callbacks=keras_callbacks,
                            verbose=verbose)

    epochs = [epoch_row(e, {k: v[i] for k, v in history.history.items()}, timer.seconds[i])
              for i, e in enumerate(history.epoch)]
    test = model.evaluate(splits.x_test, splits.y_test, batch_size=config.eval_batch_size,
                          verbose=0, return_dict=True)
    logs = finish(forwarded, test["loss"], test["accuracy"])
    if stream is not None:  # the line the project's ProgressBar prints at the end of training
        stream.write(f"test_loss: {logs['test_loss']:.4f} - test_accuracy: {logs['test_accuracy']:.4f}\n")
        stream.flush()
    return RunResult(impl="keras", config=config, epochs=epochs, test_loss=logs["test_loss"],
                     test_accuracy=logs["test_accuracy"], weights=get_weights(model))


# --------------------------------------------------------------------------- helpers for parity tests

def train_steps(model: keras.Model, batches) -> np.ndarray:
    """Train a compiled model on `batches`, an iterable of (x, y), one `train_on_batch` per batch.

    Returns each batch's mean loss as Keras computed it, before that batch's update (float32).
    The weights end up bitwise identical to `fit` on the same batches in the same order.
    """
    return np.array([model.train_on_batch(x, y, return_dict=True)["loss"] for x, y in batches],
                    dtype=np.float32)


def logits(model: keras.Model, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """The model's outputs (logits) for images `x`, float32 (N, 10).

    Calls the model eagerly, in batches. (`model.predict` gives bitwise the same numbers, but traces
    a new tf.function for every model, which is slow and warns when a test builds many models.)
    """
    return np.concatenate([np.asarray(model(x[i:i + batch_size], training=False), np.float32)
                           for i in range(0, len(x), batch_size)])


def loss_and_grads(model: keras.Model, x: np.ndarray, y: np.ndarray) -> tuple[float, Weights]:
    """Mean cross-entropy on one batch and its gradient w.r.t. every weight, in canonical layout."""
    with tf.GradientTape() as tape:
        loss = make_loss()(y, model(x, training=True))
    layers = [layer for layer in model.layers if layer.weights]
    variables = [v for layer in layers for v in (layer.kernel, layer.bias)]
    grads = tape.gradient(loss, variables)
    out = {layer.name: {"kernel": np.asarray(grads[2 * i], np.float32),
                        "bias": np.asarray(grads[2 * i + 1], np.float32)}
           for i, layer in enumerate(layers)}
    return float(loss), out
