"""Training with Flax + Optax, in the shape of Flax's examples/mnist.

    state = create_train_state(model, params, tx)        # flax.training.train_state.TrainState
    state, loss, correct = train_step(state, images, labels)
    loss, accuracy = evaluate(state, images, labels)

loss = mean over the batch of softmax cross-entropy from logits,
       l_i = logsumexp(z_i) - z_i[y_i]      (`optax.softmax_cross_entropy_with_integer_labels`),
computed with the parameters *before* the update (what Keras reports); correct = #{i: argmax z_i = y_i}.

`train_and_evaluate`, the entry point of `fmnist train --impl flax`, drives the steps through the
shared epoch loop `fmnist.loop.fit` (batch order, running metrics, validation, callbacks, history,
checkpoints). With `config.fast` (the default) it takes the fast path's layers and steps
(`flax_impl.fast_layers`, `fmnist.fastpath`); otherwise the model and step above, one jitted call
per batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from fmnist import loop
from fmnist.callbacks import CallbackList
from fmnist.config import TrainConfig
from fmnist.data import Splits
from fmnist.fastpath import steps as fastpath
from fmnist.fastpath.xla import fast_path
from fmnist.history import RunResult
from fmnist.weights import Weights

from flax_impl.fast_layers import fast_layers
from flax_impl.models import build_model, from_weights, to_weights
from flax_impl.optimizers import make_optimizer  # noqa: F401  (the Optax transformation for a config)

IMPL = "flax"


def check(config: TrainConfig) -> None:
    """Every TrainConfig trains here (both optimizers, both Adam conventions): nothing to refuse."""


def create_train_state(model, params, tx: optax.GradientTransformation) -> train_state.TrainState:
    """A `TrainState` (step, apply_fn, params, tx, opt_state) starting from `params`."""
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    # `create` sets step = 0, a Python int; as an int32 array from the start, the first jitted call
    # sees the same argument types as every later one and compiles once, not twice.
    return state.replace(step=jnp.zeros((), jnp.int32))


def loss_and_correct(params, apply_fn, images, labels):
    """(mean softmax cross-entropy of the batch from logits, number of correct predictions)."""
    logits = apply_fn({"params": params}, images)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, jnp.sum(jnp.argmax(logits, axis=-1) == labels)


def loss_and_grads(state, images, labels):
    """((mean loss, correct), gradient of the mean loss with respect to `state.params`)."""
    return jax.value_and_grad(loss_and_correct, has_aux=True)(state.params, state.apply_fn, images, labels)


def train_step(state, images, labels, grads_fn=loss_and_grads):
    """One step: grads of the mean batch loss, then `tx`'s update; returns (state, loss, correct),
    loss and correct of the batch before the update. `grads_fn` computes the gradient (the fast
    path slices it)."""
    (loss, correct), grads = grads_fn(state, images, labels)
    return state.apply_gradients(grads=grads), loss, correct


@functools.partial(jax.jit, static_argnums=0)
def _eval_sums(apply_fn, params, images, labels, mask):
    """(sum of losses, number correct) over the examples where `mask` is true."""
    logits = apply_fn({"params": params}, images)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    hits = jnp.argmax(logits, axis=-1) == labels
    return jnp.sum(jnp.where(mask, losses, 0.0)), jnp.sum(hits & mask)


# One bound `apply` per model for bare params: a static jit argument is cached by equality, and two
# `MLP().apply` bound methods are not equal, so a fresh one per call would recompile every call.
_APPLY = {name: build_model(name).apply for name in ("mlp", "cnn")}


def evaluate(state_or_params, x: np.ndarray, y: np.ndarray, batch_size: int = 1000):
    """(mean loss, accuracy) over every example of (x, y), in jitted batches of `batch_size`
    (the last padded and masked: `fmnist.loop.evaluate_in_padded_batches`).

    Accepts a `TrainState` or a bare params dict (then the plain model read off its layer names).
    """
    if isinstance(state_or_params, train_state.TrainState):
        apply_fn, params = state_or_params.apply_fn, state_or_params.params
    else:
        params = state_or_params
        apply_fn = _APPLY["cnn" if "conv_0" in params else "mlp"]
    return loop.evaluate_in_padded_batches(lambda xb, yb, mask: _eval_sums(apply_fn, params, xb, yb, mask),
                                           x, y, batch_size)


def make_run_steps(config: TrainConfig, x_train: np.ndarray, y_train: np.ndarray):
    """`run_steps(state, batches) -> (state, losses, corrects)` for `fmnist.loop.fit`.

    With `config.fast`, the fast path (`fmnist.fastpath.steps.make_run_steps`, the gradient in
    slices as `fast_path(config.model)` says; data parallel over `config.devices` devices);
    otherwise one jitted `train_step` per batch.
    """
    if not config.fast:
        return loop.one_step_at_a_time(jax.jit(train_step), x_train, y_train)
    settings = fast_path(config.model, config.devices)
    step = functools.partial(train_step, grads_fn=fastpath.in_slices(loss_and_grads, settings["grad_parts"]))
    return fastpath.make_run_steps(step, x_train, y_train, settings["scan"], config.devices)


def init_state(config: TrainConfig, weights: Weights, x_train: np.ndarray, y_train: np.ndarray):
    """(state, run_steps, evaluate_state), what `fmnist.loop.fit` takes, as `train_and_evaluate`
    trains: the `TrainState` from canonical `weights`, the `run_steps` that advances it and
    `evaluate_state(state, x, y) -> (loss, accuracy)`."""
    model = build_model(config.model, **(fast_layers(config.model) if config.fast else {}))
    state = create_train_state(model, from_weights(config.model, weights), make_optimizer(config))
    run_steps = make_run_steps(config, x_train, y_train)
    return state, run_steps, functools.partial(evaluate, batch_size=config.eval_batch_size)


def train_and_evaluate(config: TrainConfig, splits: Splits, initial_weights: Weights,
                       callbacks=(), checkpoint_dir=None) -> RunResult:
    """Train `config.model` from `initial_weights` on `splits`, test it, return a `RunResult`.

    With `checkpoint_dir` the run resumes from, and saves every epoch to, that directory (Orbax):
    the TrainState's arrays (step, params, opt_state; apply_fn and tx are code, rebuilt from config).
    """
    state, run_steps, evaluate_state = init_state(config, initial_weights, splits.x_train, splits.y_train)
    callbacks = CallbackList(callbacks)
    state, rows = loop.fit(config, splits, state, run_steps, evaluate_state, callbacks, checkpoint_dir,
                           to_saved=lambda s: {"step": s.step, "params": s.params, "opt_state": s.opt_state},
                           from_saved=lambda s, saved: s.replace(**saved))
    test_loss, test_accuracy = evaluate_state(state, splits.x_test, splits.y_test)
    loop.finish(callbacks, test_loss, test_accuracy)
    return RunResult(impl=IMPL, config=config, epochs=rows, test_loss=test_loss,
                     test_accuracy=test_accuracy, weights=to_weights(state.params))
