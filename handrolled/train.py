"""Training and evaluation for the hand-rolled models.

    state = (model, optimizer.init(model))
    state, loss, correct = train_step(state, images, labels, optimizer)
    loss, accuracy = evaluate(model, images, labels)

loss = mean over the batch of the cross-entropy from logits, l_i = logsumexp(z_i) - z_i[y_i]
(`handrolled.losses.sparse_cross_entropy_with_logits`), computed with the weights *before* the
update (what Keras reports); correct = #{i: argmax z_i = y_i}. One step is forward, loss, gradient
and optimizer update in one compiled call (the blog post dispatched four separate calls).

`train_and_evaluate`, the entry point of `fmnist train --impl handrolled`, drives the steps through
the shared epoch loop `fmnist.loop.fit` (batch order, running metrics, validation, callbacks,
history, checkpoints). With `config.fast` (the default) it takes the fast path's layers and steps
(`fmnist.fastpath`); otherwise the model and step above, one jitted call per batch. The post's
own API (`train`, `evaluate_loader`, `TrainHistory`) is in `handrolled.post`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fmnist import loop
from fmnist.callbacks import CallbackList
from fmnist.config import TrainConfig
from fmnist.data import Splits
from fmnist.fastpath import steps as fastpath
from fmnist.fastpath.xla import fast_path
from fmnist.history import RunResult
from fmnist.weights import Weights
from handrolled.losses import num_correct, sparse_cross_entropy_with_logits
from handrolled.models import from_weights, to_weights
from handrolled.optimizers import SGD, Adam

IMPL = "handrolled"


def check(config: TrainConfig) -> None:
    """Every TrainConfig trains here (both optimizers, both Adam conventions): nothing to refuse."""


def make_optimizer(config: TrainConfig):
    """The optimizer `config` asks for, as a hand-rolled `SGD` or `Adam` (pure form used)."""
    if config.optimizer == "sgd":
        return SGD(lr=config.lr, momentum=config.momentum)
    return Adam(lr=config.lr, v_decay=config.b1, s_decay=config.b2, eps=config.adam_eps,
                eps_convention=config.adam_convention)


def loss_and_correct(model, images, labels):
    """(mean cross-entropy of the batch from logits, number of correct predictions)."""
    logits = model(images)
    return sparse_cross_entropy_with_logits(labels, logits), num_correct(labels, logits)


def loss_and_grads(model, images, labels):
    """((mean loss, correct), gradient of the mean loss with respect to every array of `model`)."""
    return jax.value_and_grad(loss_and_correct, has_aux=True)(model, images, labels)


def train_step(state, images, labels, optimizer, grads_fn=loss_and_grads):
    """One step: loss and gradient at the current weights, then the optimizer update.

    `state` is (model, opt_state) and so is the new state returned with the batch's loss and
    correct count. The optimizer is an argument: the state holds only arrays (Flax keeps its
    optimizer inside the TrainState). `grads_fn` computes the gradient (the fast path slices it).
    """
    model, opt_state = state
    (loss, correct), grads = grads_fn(model, images, labels)
    model, opt_state = optimizer.update(grads, opt_state, model)
    return (model, opt_state), loss, correct


@jax.jit
def _eval_sums(model, images, labels, mask):
    """(sum of losses, number correct) over the examples where `mask` is true."""
    logits = model(images)
    losses = sparse_cross_entropy_with_logits(labels, logits, reduction="none")
    hits = jnp.argmax(logits, axis=-1) == labels
    return jnp.sum(jnp.where(mask, losses, 0.0)), jnp.sum(hits & mask)


def evaluate(model, x: np.ndarray, y: np.ndarray, batch_size: int = 1000):
    """(mean loss, accuracy) of `model` over every example, in jitted batches of `batch_size`
    (the last padded and masked: `fmnist.loop.evaluate_in_padded_batches`)."""
    return loop.evaluate_in_padded_batches(lambda xb, yb, mask: _eval_sums(model, xb, yb, mask),
                                           x, y, batch_size)


def make_run_steps(config: TrainConfig, optimizer, x_train: np.ndarray, y_train: np.ndarray):
    """`run_steps((model, opt_state), batches) -> (state, losses, corrects)` for `fmnist.loop.fit`.

    With `config.fast`, the fast path (`fmnist.fastpath.steps.make_run_steps`, the gradient in
    slices as `fast_path(config.model)` says; data parallel over `config.devices` devices);
    otherwise one jitted `train_step` per batch.
    """
    step = functools.partial(train_step, optimizer=optimizer)
    if not config.fast:
        return loop.one_step_at_a_time(jax.jit(step), x_train, y_train)
    settings = fast_path(config.model, config.devices)
    step = functools.partial(step, grads_fn=fastpath.in_slices(loss_and_grads, settings["grad_parts"]))
    return fastpath.make_run_steps(step, x_train, y_train, settings["scan"], config.devices)


def init_state(config: TrainConfig, weights: Weights, x_train: np.ndarray, y_train: np.ndarray):
    """(state, run_steps, evaluate_state), what `fmnist.loop.fit` takes, as `train_and_evaluate`
    trains: state = (model, opt_state) from canonical `weights`, the `run_steps` that advances it
    and `evaluate_state(state, x, y) -> (loss, accuracy)`."""
    model = from_weights(config.model, weights, fast=config.fast)
    optimizer = make_optimizer(config)
    run_steps = make_run_steps(config, optimizer, x_train, y_train)
    evaluate_state = lambda state, x, y: evaluate(state[0], x, y, config.eval_batch_size)  # noqa: E731
    return (model, optimizer.init(model)), run_steps, evaluate_state


def train_and_evaluate(config: TrainConfig, splits: Splits, initial_weights: Weights,
                       callbacks=(), checkpoint_dir=None) -> RunResult:
    """Train the hand-rolled `config.model` from `initial_weights`, validate every epoch, test at the end.

    With `checkpoint_dir` the run resumes from, and saves every epoch to, that directory (Orbax).
    """
    state, run_steps, evaluate_state = init_state(config, initial_weights, splits.x_train, splits.y_train)
    callbacks = CallbackList(callbacks)
    (model, _), rows = loop.fit(config, splits, state, run_steps, evaluate_state, callbacks, checkpoint_dir)
    test_loss, test_accuracy = evaluate(model, splits.x_test, splits.y_test, config.eval_batch_size)
    loop.finish(callbacks, test_loss, test_accuracy)
    return RunResult(impl=IMPL, config=config, epochs=rows, test_loss=test_loss,
                     test_accuracy=test_accuracy, weights=to_weights(model))
