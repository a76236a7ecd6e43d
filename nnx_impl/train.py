"""Training with Flax NNX + Optax, in the shape of Flax's examples/mnist (NNX).

    model = from_weights("mlp", weights)                        # an nnx.Module holding its params
    optimizer = create_optimizer(model, tx)                     # nnx.Optimizer(model, tx, wrt=nnx.Param)
    loss, correct = train_step(model, optimizer, images, labels)  # updates model and optimizer in place
    loss, accuracy = evaluate(model, images, labels)

loss = mean over the batch of softmax cross-entropy from logits,
       l_i = logsumexp(z_i) - z_i[y_i]      (`optax.softmax_cross_entropy_with_integer_labels`),
computed with the parameters *before* the update (what Keras reports); correct = #{i: argmax z_i = y_i}.
The optimizers are `flax_impl.optimizers.make_optimizer`'s (Optax), shared with the linen version.

Where NNX differs from linen: the model and optimizer are mutable objects, so a step returns only
the metrics and updates them in place; `nnx.jit` makes that work under `jax.jit` by splitting the
objects into a `graphdef` (static structure) and a `state` (arrays) on every call and merging them
back.

`train_and_evaluate`, the entry point of `fmnist train --impl nnx`, drives the steps through the
shared epoch loop `fmnist.loop.fit`, carrying `nnx.split((model, optimizer))` between calls. With
`config.fast` (the default) it takes the fast path's layers (`nnx_impl.fast_layers`) and steps
(`fmnist.fastpath`), with Flax's "functional training loop": a plain `jax.jit` of a step that
merges the graphdef and state inside, so the graph traversal happens at trace time only, and that
accepts compiler options (`nnx.jit` does not). The arithmetic is the linen version's, op for op, so
the two train bit-identically (parity_tests/test_training.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fmnist import loop
from fmnist.callbacks import CallbackList
from fmnist.config import TrainConfig
from fmnist.data import Splits
from fmnist.fastpath import steps as fastpath
from fmnist.fastpath.xla import fast_path
from fmnist.history import RunResult
from fmnist.weights import Weights

from flax_impl.optimizers import make_optimizer  # noqa: F401  (one Optax module for both Flax APIs)
from nnx_impl.fast_layers import fast_layers
from nnx_impl.models import from_weights, to_weights

IMPL = "nnx"


def check(config: TrainConfig) -> None:
    """Every TrainConfig trains here (both optimizers, both Adam conventions): nothing to refuse."""


def create_optimizer(model: nnx.Module, tx: optax.GradientTransformation) -> nnx.Optimizer:
    """`nnx.Optimizer(model, tx, wrt=nnx.Param)`: tx's state for the model's params and a step count
    (with the model, NNX's counterpart of `flax_impl.train.create_train_state`)."""
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def loss_and_correct(model, images, labels):
    """(mean softmax cross-entropy of the batch from logits, number of correct predictions)."""
    logits = model(images)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, jnp.sum(jnp.argmax(logits, axis=-1) == labels)


def loss_and_grads(model, images, labels):
    """((mean loss, correct), gradient of the mean loss with respect to the model's `nnx.Param`s)."""
    return nnx.value_and_grad(loss_and_correct, has_aux=True)(model, images, labels)


def train_step(model, optimizer, images, labels, grads_fn=loss_and_grads):
    """One step: grads of the mean batch loss, then `tx`'s update in place; returns (loss, correct)
    of the batch before the update. `grads_fn` computes the gradient (the fast path slices it)."""
    (loss, correct), grads = grads_fn(model, images, labels)
    optimizer.update(model, grads)
    return loss, correct


@jax.jit
def _eval_sums(graphdef, params, images, labels, mask):
    """(sum of losses, number correct) over the examples where `mask` is true."""
    model = nnx.merge(graphdef, params)
    logits = model(images)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    hits = jnp.argmax(logits, axis=-1) == labels
    return jnp.sum(jnp.where(mask, losses, 0.0)), jnp.sum(hits & mask)


def evaluate(model, x: np.ndarray, y: np.ndarray, batch_size: int = 1000):
    """(mean loss, accuracy) over every example of (x, y), in jitted batches of `batch_size`
    (the last padded and masked: `fmnist.loop.evaluate_in_padded_batches`).

    Accepts an NNX model or the `(graphdef, state)` of `nnx.split((model, optimizer))`.
    """
    if not isinstance(model, nnx.Module):
        merged = nnx.merge(*model)
        model = merged[0] if isinstance(merged, tuple) else merged
    # Compiled once for all models of an architecture: the graphdef is part of the argument
    # structure and compares equal between models built alike.
    graphdef, params = nnx.split(model)
    return loop.evaluate_in_padded_batches(lambda xb, yb, mask: _eval_sums(graphdef, params, xb, yb, mask),
                                           x, y, batch_size)


def make_run_steps(config: TrainConfig, graphdef, x_train: np.ndarray, y_train: np.ndarray):
    """`run_steps(state, batches) -> (state, losses, corrects)` for `fmnist.loop.fit`, where
    `graphdef, state = nnx.split((model, optimizer))`.

    With `config.fast`, the fast path (`fmnist.fastpath.steps.make_run_steps` on a pure step that
    merges inside; the state is donated; data parallel over `config.devices` devices); otherwise
    `nnx.jit(train_step)` once per batch.
    """
    if not config.fast:
        step = nnx.jit(train_step)

        def run_steps(state, batches):
            model, optimizer = nnx.merge(graphdef, state)
            losses, corrects = [], []
            for idx in batches:
                loss, correct = step(model, optimizer, x_train[idx], y_train[idx])
                losses.append(loss)
                corrects.append(correct)
            return nnx.state((model, optimizer)), np.asarray(losses), np.asarray(corrects)
        return run_steps

    settings = fast_path(config.model, config.devices)
    grads_fn = fastpath.in_slices(loss_and_grads, settings["grad_parts"])

    def pure_step(state, images, labels):
        model, optimizer = nnx.merge(graphdef, state)
        loss, correct = train_step(model, optimizer, images, labels, grads_fn)
        return nnx.state((model, optimizer)), loss, correct

    return fastpath.make_run_steps(pure_step, x_train, y_train, settings["scan"], config.devices)


def init_state(config: TrainConfig, weights: Weights, x_train: np.ndarray, y_train: np.ndarray):
    """(state, run_steps, evaluate_state), what `fmnist.loop.fit` takes, as `train_and_evaluate`
    trains: the `state` of `nnx.split((model, optimizer))` from canonical `weights`, the `run_steps`
    that advances it and `evaluate_state(state, x, y) -> (loss, accuracy)`, both holding the graphdef."""
    model = from_weights(config.model, weights, **(fast_layers(config.model) if config.fast else {}))
    optimizer = create_optimizer(model, make_optimizer(config))
    graphdef, state = nnx.split((model, optimizer))  # the state (arrays) is what run_steps carries
    run_steps = make_run_steps(config, graphdef, x_train, y_train)
    evaluate_state = lambda state, x, y: evaluate((graphdef, state), x, y, config.eval_batch_size)  # noqa: E731
    return state, run_steps, evaluate_state


def train_and_evaluate(config: TrainConfig, splits: Splits, initial_weights: Weights,
                       callbacks=(), checkpoint_dir=None) -> RunResult:
    """Train `config.model` from `initial_weights` on `splits`, test it, return a `RunResult`.

    With `checkpoint_dir` the run resumes from, and saves every epoch to, that directory (Orbax):
    the `state` of `nnx.split((model, optimizer))` (params, opt_state, step; the graphdef is code,
    rebuilt from config).
    """
    state, run_steps, evaluate_state = init_state(config, initial_weights, splits.x_train, splits.y_train)
    callbacks = CallbackList(callbacks)
    state, rows = loop.fit(config, splits, state, run_steps, evaluate_state, callbacks, checkpoint_dir)
    test_loss, test_accuracy = evaluate_state(state, splits.x_test, splits.y_test)
    loop.finish(callbacks, test_loss, test_accuracy)
    # the graphdef stays inside init_state's functions; to_weights reads the model's part of the split
    return RunResult(impl=IMPL, config=config, epochs=rows, test_loss=test_loss,
                     test_accuracy=test_accuracy, weights=to_weights(state[0]))
