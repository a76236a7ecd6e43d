"""Training with `model.fit`, as a Keras user would, fed the project's shared batch order.

The same code runs on Keras's TensorFlow backend (`--impl keras`, the default when this package is
imported first) and on its JAX backend (`--impl keras-jax`, which `keras_baseline.jax_backend` runs
in a child process started with KERAS_BACKEND=jax). Only `loss_and_grads` differs by backend.

What is shared with the JAX implementations is only what defines the run: the config, the initial
weights, the preprocessed arrays and the batch order. Everything else is Keras's own: `fit`, its
loss/accuracy bookkeeping, its progress bar, its `EarlyStopping`, `evaluate`. The Keras callbacks
`fit` is given are in `keras_baseline.fit_callbacks`.

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
import gc

import numpy as np

from fmnist.config import TrainConfig
from fmnist.data import Dataloader, Splits
from fmnist.history import RunResult
from fmnist.loop import NonFiniteLoss, finish, train_loader
from fmnist.weights import Weights
from keras_baseline import checkpoint, import_keras, rules
from keras_baseline.fit_callbacks import (EpochCheckpoint, EpochTimer, FmnistCallbacks, ResumedEarlyStopping,
                                          StopOnNonFiniteLoss, epoch_row)
from keras_baseline.models import from_weights, to_weights
from keras_baseline.verbosity import keras_verbosity

keras = import_keras()
BACKEND = keras.backend.backend()  # "tensorflow" (--impl keras) or "jax" (--impl keras-jax)
IMPL = {"tensorflow": "keras", "jax": "keras-jax"}[BACKEND]


# --------------------------------------------------------------------------- what can run, the optimizer

def check(config: TrainConfig) -> None:
    """Raise ValueError if Keras cannot run `config` (`keras_baseline.rules`, importable without Keras)."""
    rules.check(config)


def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    """Keras's Adam or SGD with the config's hyper-parameters."""
    check(config)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=config.lr, beta_1=config.b1, beta_2=config.b2,
                                     epsilon=config.adam_eps)
    return keras.optimizers.SGD(learning_rate=config.lr, momentum=config.momentum)


def make_loss() -> keras.losses.Loss:
    """Mean cross-entropy of integer labels, on logits (stable, never clipped)."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def compiled_model(config: TrainConfig, weights: Weights) -> keras.Sequential:
    """`config.model`, loaded with `weights` and compiled with the config's optimizer."""
    model = from_weights(config.model, weights)
    model.compile(optimizer=make_optimizer(config), loss=make_loss(), metrics=["accuracy"])
    return model


# --------------------------------------------------------------------------- one batch, the whole set

def loss_and_grads(model: keras.Model, x: np.ndarray, y: np.ndarray) -> tuple[float, Weights]:
    """The mean cross-entropy of `model` on the batch (x, y), and its gradient w.r.t. every weight.

    Returns (loss, grads): the loss as a float, the gradients as canonical weights (float32), at the
    model's current weights (nothing is updated). TensorFlow: eagerly, under a `tf.GradientTape`.
    JAX: `jax.value_and_grad` of the model's `stateless_call`, jitted, as Keras's JAX trainer
    differentiates its `train_step`.
    """
    layers = [layer for layer in model.layers if layer.weights]
    variables = [v for layer in layers for v in (layer.kernel, layer.bias)]
    loss, grads = (_jax_loss_and_grads if BACKEND == "jax" else _tf_loss_and_grads)(model, variables, x, y)
    out = {layer.name: {"kernel": np.asarray(grads[2 * i], np.float32),
                        "bias": np.asarray(grads[2 * i + 1], np.float32)}
           for i, layer in enumerate(layers)}
    return float(loss), out


def _tf_loss_and_grads(model, variables, x, y):
    import tensorflow as tf  # already imported by keras on this backend

    with tf.GradientTape() as tape:
        loss = make_loss()(y, model(x, training=True))
    return loss, tape.gradient(loss, variables)


def _jax_loss_and_grads(model, variables, x, y):
    import jax  # already imported by keras on this backend

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    loss_fn = make_loss()

    def loss_of(trainable, x, y):
        y_pred, _ = model.stateless_call(trainable, non_trainable, x, training=True)
        return loss_fn(y, y_pred)

    loss, grads = jax.jit(jax.value_and_grad(loss_of))(trainable, x, y)
    # `stateless_call` takes and returns values in `model.trainable_variables` order.
    position = {id(v): i for i, v in enumerate(model.trainable_variables)}
    return loss, [grads[position[id(v)]] for v in variables]


# train_step: none as a free function - Keras's step is `Model.train_step`, run inside `fit` (see `train_steps`).


def evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> tuple[float, float]:
    """(mean loss, accuracy) of `model` over every example of (x, y): Keras's `model.evaluate`.

    A model compiled by `compiled_model` is evaluated with its compiled loss and accuracy; one that
    is not compiled yet (`from_weights`) is compiled here first, in place, with the same loss and metric.
    """
    if not model.compiled:
        model.compile(loss=make_loss(), metrics=["accuracy"])
    result = model.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)
    return float(result["loss"]), float(result["accuracy"])


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


# --------------------------------------------------------------------------- training

def train_and_evaluate(config: TrainConfig, splits: Splits, initial_weights: Weights,
                       callbacks=(), checkpoint_dir=None) -> RunResult:
    """Train `config.model` from `initial_weights` with `model.fit`, then evaluate on the test set.

    `callbacks` are project callbacks (`fmnist.callbacks`); see `FmnistCallbacks` and
    `keras_verbosity`. `config.early_stopping_patience` adds `keras.callbacks.EarlyStopping` on
    val_loss (loss when there is no validation set). A project `EarlyStopping` passed in as well is
    still forwarded; it applies the same rule (stop after `patience` epochs without a strictly lower
    val_loss), so both stop together.
    With `checkpoint_dir`, a run resumes from the last epoch saved there (`keras_baseline.checkpoint`,
    then `fit(initial_epoch=...)`) and saves after every epoch. A non-finite training loss raises
    `fmnist.loop.NonFiniteLoss` unless `config.terminate_on_nan` is off.
    """
    # Seeds Python's `random`, NumPy's global state, TF and Keras: a side effect on the caller's global
    # RNGs, harmless here (the project draws from explicit `np.random.default_rng`s), but note it.
    # On the JAX backend it imports TensorFlow too when installed (to seed tf.data); the keras-jax
    # child blocks that import (keras_baseline.child_runtime), and without TensorFlow it is skipped.
    keras.utils.set_random_seed(config.seed)
    model = compiled_model(config, initial_weights)
    verbose, stream, forwarded = keras_verbosity(callbacks)
    restored = checkpoint.restore(checkpoint_dir, model) if checkpoint_dir is not None else None
    initial_epoch, done_rows = restored if restored is not None else (0, [])

    batches = SharedOrderBatches(train_loader(config, splits))
    timer = EpochTimer()
    keras_callbacks = [EpochSetter(batches), timer]
    if config.terminate_on_nan:
        keras_callbacks.insert(0, StopOnNonFiniteLoss())
    if checkpoint_dir is not None:  # saved before the project callbacks hear of the epoch
        keras_callbacks.append(EpochCheckpoint(checkpoint_dir, timer, done_rows))
    keras_callbacks.append(FmnistCallbacks(forwarded, config, len(batches), timer, done_rows))
    validation = (splits.x_val, splits.y_val) if len(splits.x_val) else None
    if config.early_stopping_patience:  # the same rule as fmnist.loop.fit for the JAX implementations
        keras_callbacks.append(ResumedEarlyStopping(
            done_rows, monitor="val_loss" if validation else "loss", patience=config.early_stopping_patience))

    # Keras prints to sys.stdout; send it where the caller's progress bar would have written.
    stopped = None
    with contextlib.redirect_stdout(stream) if stream is not None else contextlib.nullcontext():
        try:
            history = model.fit(batches, epochs=config.epochs, initial_epoch=initial_epoch, shuffle=False,
                                validation_data=validation, validation_batch_size=config.eval_batch_size,
                                callbacks=keras_callbacks, verbose=verbose)
        except NonFiniteLoss as e:
            stopped = (e.epoch, e.step, e.loss)
    if stopped is not None:
        # Raised anew, without the traceback into `fit`: that traceback keeps TensorFlow's dataset
        # iterator alive until interpreter exit, where TF then warns it could not finalize it.
        gc.collect()
        raise NonFiniteLoss(*stopped)

    epochs = done_rows + [epoch_row(e, {k: v[i] for k, v in history.history.items()}, timer.seconds[i])
                          for i, e in enumerate(history.epoch)]
    logs = finish(forwarded, *evaluate(model, splits.x_test, splits.y_test, config.eval_batch_size))
    if stream is not None:  # the line the project's ProgressBar prints at the end of training
        stream.write(f"test_loss: {logs['test_loss']:.4f} - test_accuracy: {logs['test_accuracy']:.4f}\n")
        stream.flush()
    return RunResult(impl=IMPL, config=config, epochs=epochs, test_loss=logs["test_loss"],
                     test_accuracy=logs["test_accuracy"], weights=to_weights(model))


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

    Calls the model eagerly, in batches. (On TensorFlow, `model.predict` gives bitwise the same
    numbers, but traces a new tf.function for every model, which is slow and warns when a test
    builds many models.)
    """
    return np.concatenate([np.asarray(model(x[i:i + batch_size], training=False), np.float32)
                           for i in range(0, len(x), batch_size)])
