"""Training and evaluation for the hand-rolled models: the post's `train`, grown up.

Two entry points share one idea, a training step compiled as a single `jax.jit` call
(forward, loss, gradient and optimizer update together; the post dispatched four separate calls):

* `train(num_epochs, train_datasource, valid_datasource, optimizer, loss_fn, grad_fn, model)`,
  the post's signature: any model, loss on the model's output, batches from a `Dataloader`.
  What changed from the post: one jitted step per batch; running loss and accuracy weighted by
  batch size (the post divided by the wrong count); validation results in their own history keys
  (the post appended them to the training lists); callbacks; `evaluate_loader()` for the test set.
* `train_and_evaluate(config, splits, initial_weights, callbacks)`, the project's entry point used
  by `fmnist train --impl handrolled`: logits and `sparse_cross_entropy_with_logits`, the shared
  batch order, and the fast path: the training set lives on the device, and `steps_per_call`
  steps run as one compiled `lax.scan` with donated buffers, so the host synchronises once per
  call rather than once per step.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fmnist import loop
from fmnist.callbacks import Callback, CallbackList
from fmnist.config import TrainConfig
from fmnist.data import Splits
from fmnist.history import RunResult
from fmnist.weights import Weights
from fmnist.xla import COMPILER_OPTIONS, SCAN_UNROLL, fast_path  # settings and measurements: fmnist/xla.py
from handrolled.losses import num_correct, sparse_cross_entropy_with_logits
from handrolled.models import from_weights, to_weights
from handrolled.optimizers import SGD, Adam


def make_optimizer(config: TrainConfig):
    """The optimizer `config` asks for, as a hand-rolled `SGD` or `Adam` (pure form used)."""
    if config.optimizer == "sgd":
        return SGD(lr=config.lr, momentum=config.momentum)
    return Adam(lr=config.lr, v_decay=config.b1, s_decay=config.b2, eps=config.adam_eps,
                eps_convention=config.adam_convention)


def loss_and_correct(model, images, labels):
    """Mean cross-entropy of the batch, from logits, and the number of correct predictions."""
    logits = model(images)
    return sparse_cross_entropy_with_logits(labels, logits), num_correct(labels, logits)


def loss_and_grads(model, images, labels, parts: int = 1):
    """((mean loss, correct), gradient of the mean loss) of a batch, computed over `parts` slices.

    With slices of n_k examples, mean loss = sum_k (n_k / n) * mean_k, and likewise the gradient: the
    same quantity as in one piece, added in a different order (float32 rounding only). Why slice:
    the slices' computations are independent, and XLA:CPU runs independent work concurrently, one
    core each. Most of a CNN step's element-wise work (relu, pooling and their gradients) runs on
    one core per operation, so one whole-batch gradient leaves the second core idle for part of
    it. Measured with convolutions in YNNPACK (one core each; jitted CNN value_and_grad, batch 128):
    23.0 ms whole vs 14.8 ms in 2 parts (16.7 in 4) on 2 cores, 26.8 vs 25.3 on 1 core, so the gain
    is the second core; with XLA's multi-threaded convolutions the gain is smaller
    (`fmnist.xla.GRAD_PARTS_BY_MODEL`).
    """
    grad_fn = jax.value_and_grad(loss_and_correct, has_aux=True)
    n = images.shape[0]
    if parts == 1 or n < parts:
        return grad_fn(model, images, labels)
    bounds = [n * k // parts for k in range(parts + 1)]
    loss, correct, grads = 0.0, 0, None
    for a, b in zip(bounds[:-1], bounds[1:]):
        (part_loss, part_correct), part_grads = grad_fn(model, images[a:b], labels[a:b])
        w = (b - a) / n
        loss, correct = loss + w * part_loss, correct + part_correct
        part_grads = jax.tree.map(lambda g: w * g, part_grads)
        grads = part_grads if grads is None else jax.tree.map(jnp.add, grads, part_grads)
    return (loss, correct), grads


def train_step(model, opt_state, images, labels, optimizer, grad_parts: int = 1):
    """One step: loss and gradient at the current weights, then the optimizer update.

    Returns (model, opt_state, loss, correct); loss and correct are of the batch *before* the
    update, as Keras reports them. `grad_parts` > 1 computes the gradient in slices (`loss_and_grads`).
    """
    (loss, correct), grads = loss_and_grads(model, images, labels, grad_parts)
    model, opt_state = optimizer.update(grads, opt_state, model)
    return model, opt_state, loss, correct


def make_run_steps(optimizer, x_train: np.ndarray, y_train: np.ndarray, scan: bool = True,
                   grad_parts: int = 1):
    """`run_steps((model, opt_state), batches) -> (state, losses, corrects)` for `fmnist.loop.fit`.

    The training set is copied to the device once; each batch is gathered there by index. With
    `scan`, the K steps of a call are one compiled `lax.scan` whose input state buffers are donated
    (updated in place); otherwise a Python loop dispatches K jitted steps without waiting on them.
    Both give the same numbers (tested). `fmnist.xla.fast_path(model)` gives the settings training uses.
    """
    # The arrays are arguments of the compiled functions, not constants captured by closure: a
    # captured 172 MB training set is baked into every compiled program, which made the first MLP
    # epoch (three compiles: 100 steps, the remainder, the partial batch) take 7.0 s instead of 2.5.
    x_all, y_all = jax.device_put(jnp.asarray(x_train)), jax.device_put(jnp.asarray(y_train))
    step = functools.partial(train_step, optimizer=optimizer, grad_parts=grad_parts)

    @functools.partial(jax.jit, donate_argnums=0, compiler_options=COMPILER_OPTIONS)
    def scan_steps(state, x_all, y_all, batches):
        def body(state, idx):
            model, opt_state, loss, correct = step(*state, x_all[idx], y_all[idx])
            return (model, opt_state), (loss, correct)
        return jax.lax.scan(body, state, batches, unroll=SCAN_UNROLL)

    @functools.partial(jax.jit, donate_argnums=0, compiler_options=COMPILER_OPTIONS)
    def one_step(state, x_all, y_all, idx):
        model, opt_state, loss, correct = step(*state, x_all[idx], y_all[idx])
        return (model, opt_state), (loss, correct)

    def run_steps(state, batches):
        if scan:
            state, (losses, corrects) = scan_steps(state, x_all, y_all, jnp.asarray(batches))
            return state, losses, corrects
        losses, corrects = [], []
        for idx in np.asarray(batches):  # NumPy rows: no device-side slicing op per step
            state, (loss, correct) = one_step(state, x_all, y_all, idx)
            losses.append(loss)
            corrects.append(correct)
        return state, jnp.stack(losses), jnp.stack(corrects)

    return run_steps


@functools.partial(jax.jit, compiler_options=COMPILER_OPTIONS)
def _eval_batch(model, images, labels):
    loss, correct = loss_and_correct(model, images, labels)
    return loss * labels.shape[0], correct


def evaluate(model, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000):
    """(mean loss, accuracy) of `model` over every example, in jitted batches (the last may be partial)."""
    loss_sum, correct = 0.0, 0
    for i in range(0, len(images), batch_size):
        batch_loss, batch_correct = _eval_batch(model, images[i:i + batch_size], labels[i:i + batch_size])
        loss_sum += float(batch_loss)
        correct += int(batch_correct)
    return loss_sum / len(images), correct / len(images)


def train_and_evaluate(config: TrainConfig, splits: Splits, initial_weights: Weights,
                       callbacks=(), checkpoint_dir=None) -> RunResult:
    """Train the hand-rolled `config.model` from `initial_weights`, validate every epoch, test at the end.

    With `checkpoint_dir` the run resumes from, and saves every epoch to, that directory (Orbax).
    """
    model = from_weights(config.model, initial_weights)
    optimizer = make_optimizer(config)
    run_steps = make_run_steps(optimizer, splits.x_train, splits.y_train, **fast_path(config.model))
    evaluate_fn = lambda state, x, y: evaluate(state[0], x, y, config.eval_batch_size)  # noqa: E731
    callbacks = CallbackList(callbacks)
    (model, _), rows = loop.fit(config, splits, (model, optimizer.init(model)), run_steps, evaluate_fn, callbacks,
                                checkpoint_dir)
    test_loss, test_accuracy = evaluate(model, splits.x_test, splits.y_test, config.eval_batch_size)
    loop.finish(callbacks, test_loss, test_accuracy)
    return RunResult(impl="handrolled", config=config, epochs=rows, test_loss=test_loss,
                     test_accuracy=test_accuracy, weights=to_weights(model))


# ----------------------------------------------------------------------------- the post's API

# `loss_fn` is a static argument: compiled once per loss function and batch shape, and reused by
# every later `evaluate_loader` call (validation runs it every epoch).
@functools.partial(jax.jit, static_argnums=0, compiler_options=COMPILER_OPTIONS)
def _batch_metrics(loss_fn, model, X, y):
    out = model(X)
    return loss_fn(y, out) * y.shape[0], jnp.sum(jnp.argmax(out, axis=-1) == y)


def evaluate_loader(model, datasource, loss_fn: Callable) -> dict:
    """{"loss", "accuracy"} of `model` over every batch of `datasource`, weighted by batch size.

    `loss_fn(y, model(X))` must be a batch mean, as in the post (`sparse_cross_entropy`).
    Use it on the test set once training is done.
    """
    loss_sum, correct, count = 0.0, 0, 0
    for X, y in datasource:
        batch_loss, batch_correct = _batch_metrics(loss_fn, model, X, y)
        loss_sum, correct, count = loss_sum + float(batch_loss), correct + int(batch_correct), count + len(y)
    return {"loss": loss_sum / count, "accuracy": correct / count}


def train(num_epochs: int, train_datasource, valid_datasource, optimizer, loss_fn: Callable,
          grad_fn: Callable | None, model, callbacks: list[Callback] | None = None):
    """Train `model` the post's way and return its `TrainHistory`.

    The history is Keras-shaped: {"loss": [...], "accuracy": [...], "val_loss": [...],
    "val_accuracy": [...]} (validation keys only with a `valid_datasource`), and, as Keras's
    History does, it holds the trained model as `history.model`: the post's `train` lost it, so
    it could not be evaluated on the test set.

    `loss_fn(y, model(X))` is a batch mean; `grad_fn(model, X, y)` its gradient (None: derived
    from loss_fn). Each step runs as one jitted call of forward, loss, gradient and
    `optimizer.update` (the pure form of `optimizer.step`). Without callbacks a progress bar is shown.
    """
    from fmnist.callbacks import History, ProgressBar

    def loss_and_output(model, X, y):
        out = model(X)
        return loss_fn(y, out), out

    @functools.partial(jax.jit, compiler_options=COMPILER_OPTIONS)
    def step(model, opt_state, X, y):
        if grad_fn is None:
            (loss, out), grads = jax.value_and_grad(loss_and_output, has_aux=True)(model, X, y)
        else:  # the post's separate grad_fn, traced into the same compiled step
            loss, out = loss_and_output(model, X, y)
            grads = grad_fn(model, X, y)
        model, opt_state = optimizer.update(grads, opt_state, model)
        return (model, opt_state), loss, jnp.sum(jnp.argmax(out, axis=-1) == y)

    history = History()
    callbacks = CallbackList([*(callbacks if callbacks is not None else [ProgressBar()]), history])
    opt_state = optimizer.state if optimizer.state is not None else optimizer.init(model)

    def run_steps(state, batch):
        X, y = batch
        return step(*state, X, y)

    validate = None
    if valid_datasource is not None:
        validate = lambda state: tuple(evaluate_loader(state[0], valid_datasource, loss_fn).values())  # noqa: E731
    (model, optimizer.state), rows = loop.run_epochs(
        (model, opt_state), num_epochs, groups_of_epoch=lambda epoch: iter(train_datasource),
        steps_per_epoch=len(train_datasource), run_steps=run_steps, count_of=lambda batch: len(batch[1]),
        validate=validate, callbacks=callbacks)
    keys = ("loss", "accuracy") + (("val_loss", "val_accuracy") if validate else ())
    return TrainHistory({k: [row[k] for row in rows] for k in keys}, model)


class TrainHistory(dict):
    """Per-epoch metric lists, like Keras's `History.history`, plus the trained `model`."""

    def __init__(self, metrics: dict, model):
        super().__init__(metrics)
        self.model = model
