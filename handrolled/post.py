"""The blog post's training API, grown up: `train`, `evaluate_loader` and `TrainHistory`.

    history = train(num_epochs, train_loader, valid_loader, optimizer, loss_fn, grad_fn, model)
    evaluate_loader(history.model, test_loader, loss_fn)   # {"loss": ..., "accuracy": ...}

Any model, a loss on the model's output, batches from a `Dataloader`. What changed from the post:
one jitted step per batch (forward, loss, gradient and `optimizer.update` together); running loss
and accuracy weighted by batch size (the post divided by the wrong count); validation results in
their own history keys (the post appended them to the training lists); callbacks; the trained
model kept on the history; `evaluate_loader` for the test set. The project's own entry point,
on logits and the shared batch order, is `handrolled.train.train_and_evaluate`.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from fmnist import loop
from fmnist.callbacks import Callback, CallbackList, History, ProgressBar

# `loss_fn` is a static argument: compiled once per loss function and batch shape, and reused by
# every later `evaluate_loader` call (validation runs it every epoch).
@functools.partial(jax.jit, static_argnums=0)
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
    def loss_and_output(model, X, y):
        out = model(X)
        return loss_fn(y, out), out

    @jax.jit
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
