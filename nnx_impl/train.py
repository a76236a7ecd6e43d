"""Training with Flax NNX + Optax, in the shape of Flax's examples/mnist (NNX), plus the project's fast path.

    model = from_weights("mlp", weights)                        # an nnx.Module holding its params
    optimizer = create_optimizer(model, tx)                     # nnx.Optimizer(model, tx, wrt=nnx.Param)
    loss, correct = train_step(model, optimizer, images, labels)  # updates model and optimizer in place
    loss, correct = eval_step(model, images, labels)

loss = mean over the batch of softmax cross-entropy from logits,
       l_i = logsumexp(z_i) - z_i[y_i]      (`optax.softmax_cross_entropy_with_integer_labels`),
computed with the parameters *before* the update (what Keras reports); correct = #{i: argmax z_i = y_i}.
The optimizers are `flax_impl.optimizers.make_optimizer`'s (Optax), shared with the linen version.

Where NNX differs from linen: the model and optimizer are mutable objects, so a step returns only
the metrics and updates them in place; `nnx.jit` makes that work under `jax.jit` by splitting the
objects into a `graphdef` (static structure) and a `state` (arrays) on every call and merging them
back. `nnx.jit` takes no `compiler_options`, so `train_step`/`eval_step` above compile with XLA's
defaults, not with `fmnist.xla.COMPILER_OPTIONS` (a CNN step then rounds its convolutions differently;
tests/nnx_impl/test_nnx_train.py measures by how much).

Fast path (`make_run_steps`): Flax's "functional training loop" (docs_nnx/guides/performance.md):
`graphdef, state = nnx.split((model, optimizer))` once, then a plain `jax.jit` that merges inside,
runs the steps and returns the new state, so the Python graph traversal happens at trace time only.
Otherwise as `flax_impl.train.make_run_steps`: the training set is copied to the device once, each
call runs K steps gathering each batch on the device (`x[idx]`) from a (K, B) int32 index array, as
a `lax.scan` (MLP) or a Python loop of single jitted steps (CNN: XLA:CPU runs convolution gradients
inside loop bodies far slower, jax-ml/jax#12868), with the gradient in `grad_parts` slices (settings
and measurements at `fmnist.xla.fast_path`). The arithmetic is the linen version's, op for op, so
the two train bit-identically (parity_tests/test_training.py).

`train_and_evaluate` drives this through the shared epoch loop `fmnist.loop.fit`, so batch order,
running metrics, validation, callbacks and history mean the same as in the other implementations.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax import lax

from fmnist.callbacks import CallbackList
from fmnist.config import TrainConfig
from fmnist.data import Splits
from fmnist.history import RunResult
from fmnist.loop import evaluate_in_padded_batches, finish, fit
from fmnist.weights import Weights, check_weights
from fmnist.xla import COMPILER_OPTIONS, SCAN_UNROLL, fast_path  # settings and measurements: fmnist/xla.py

from flax_impl.optimizers import make_optimizer
from nnx_impl.models import from_weights, to_weights

IMPL = "nnx"


def create_optimizer(model: nnx.Module, tx: optax.GradientTransformation) -> nnx.Optimizer:
    """`nnx.Optimizer(model, tx, wrt=nnx.Param)`: tx's state for the model's params and a step count
    (with the model, NNX's counterpart of `flax_impl.train.create_train_state`)."""
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def _loss_and_logits(model, images, labels):
    logits = model(images)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, logits


def _correct(logits, labels):
    return jnp.sum(jnp.argmax(logits, axis=-1) == labels)


def _loss_and_grads(model, images, labels, parts: int = 1):
    """((mean loss, correct), grads of the mean loss w.r.t. the model's `nnx.Param`s) of a batch,
    computed over `parts` slices.

    mean loss = sum_k (n_k / n) * mean_k over slices of n_k examples, likewise the gradient: the same
    quantity, summed in another order. XLA:CPU runs the slices' independent computations
    concurrently, one core each (numbers at `fmnist.xla.GRAD_PARTS_BY_MODEL`). The sums are the
    linen version's (`flax_impl.train._loss_and_grads`) in the same order.
    """
    grad_fn = nnx.value_and_grad(_loss_and_logits, has_aux=True)
    n = images.shape[0]
    if parts == 1 or n < parts:
        (loss, logits), grads = grad_fn(model, images, labels)
        return (loss, _correct(logits, labels)), grads
    bounds = [n * k // parts for k in range(parts + 1)]
    loss, correct, grads = 0.0, 0, None
    for a, b in zip(bounds[:-1], bounds[1:]):
        (part_loss, logits), part_grads = grad_fn(model, images[a:b], labels[a:b])
        w = (b - a) / n
        loss, correct = loss + w * part_loss, correct + _correct(logits, labels[a:b])
        part_grads = jax.tree.map(lambda g: w * g, part_grads)
        grads = part_grads if grads is None else jax.tree.map(jnp.add, grads, part_grads)
    return (loss, correct), grads


def _train_step(model, optimizer, images, labels, grad_parts: int = 1):
    """One step: grads of the mean batch loss, then `tx`'s update in place; loss/correct are pre-update."""
    (loss, correct), grads = _loss_and_grads(model, images, labels, grad_parts)
    optimizer.update(model, grads)
    return loss, correct


train_step = nnx.jit(_train_step, static_argnames="grad_parts")
train_step.__doc__ = ("train_step(model, optimizer, images, labels, grad_parts=1) -> (loss, correct), "
                      "updating model and optimizer in place; `nnx.jit`, XLA's default compiler options.")


@nnx.jit
def eval_step(model, images, labels):
    """(mean loss, number correct) on one batch, no update."""
    loss, logits = _loss_and_logits(model, images, labels)
    return loss, _correct(logits, labels)


# --------------------------------------------------------------------------- fast path

# Split/merge with a plain `jax.jit` rather than `nnx.jit` per call, for two reasons: `nnx.jit`
# accepts no `compiler_options` (flax 0.12.8 and 0.12.12), and it splits and merges the model and
# optimizer graph in Python on every call. Measured with scripts/nnx_jit_vs_split_merge.py (the
# 2-core box, shared; 9 interleaved rounds per run, 3 runs: two on jax 0.12.0.1 + flax 0.12.12, one
# on jax 0.10.2 + flax 0.12.8; medians of process CPU time in ms, all threads, which other load
# moves less than wall time; all without COMPILER_OPTIONS, so that only the call differs):
#                                                nnx.jit     nnx.cached_partial  split/merge
#   MLP, 1 step per call (dispatch-bound)       1.23-1.69       0.64-0.91        0.52-0.66
#   MLP, 100 steps in one lax.scan per call     31.7-36.3       30.8-36.2        30.6-35.2
#   CNN, 1 step per call, batch 32 (the loop)   15.4-21.5       14.7-20.9        14.6-20.3
# So nnx.jit costs 0.7-1.0 ms of Python per call, and in every run split/merge used less CPU as
# trained: 3-9% (MLP) and 5-9% (CNN). Asynchronous dispatch hides that cost only partly: on 2
# cores the Python thread competes with XLA's. Wall times moved more than that between rounds (at
# the quietest, the MLP call took 20.5 ms with nnx.jit, 18.9 with split/merge). `nnx.cached_partial`
# removes most of the cost, but cannot pass the compiler options either.

def _scan_steps(graphdef, state, x, y, batches, grad_parts=1):
    """K steps as one `lax.scan`; batch k is (x[batches[k]], y[batches[k]]), gathered on device."""
    def body(state, idx):
        model, optimizer = nnx.merge(graphdef, state)
        loss, correct = _train_step(model, optimizer, x[idx], y[idx], grad_parts)
        return nnx.state((model, optimizer)), (loss, correct)

    state, (losses, corrects) = lax.scan(body, state, batches, unroll=SCAN_UNROLL)
    return state, losses, corrects


def _indexed_step(graphdef, state, x, y, idx, grad_parts=1):
    """One step on batch (x[idx], y[idx]), gathered on device."""
    model, optimizer = nnx.merge(graphdef, state)
    loss, correct = _train_step(model, optimizer, x[idx], y[idx], grad_parts)
    return nnx.state((model, optimizer)), loss, correct


def make_run_steps(x_train: np.ndarray, y_train: np.ndarray, scan: bool = True, grad_parts: int = 1):
    """`run_steps((graphdef, state), batches) -> ((graphdef, state), losses (K,), corrects (K,))` for
    `fmnist.loop.fit`, where `graphdef, state = nnx.split((model, optimizer))`.

    `x_train`, `y_train` are copied to the device here, once; each call then only sends the (K, B)
    int32 index array. The state is donated: the caller must use the returned state, not the old one
    (nor the model and optimizer it was split from; `nnx.merge(graphdef, state)` gives new ones).
    With `scan`, the K steps are one `_scan_steps` call; otherwise a Python loop dispatches K jitted
    `_indexed_step`s without waiting on them. `fmnist.xla.fast_path(model)` gives the settings
    training uses.
    """
    x, y = jax.device_put(jnp.asarray(x_train)), jax.device_put(jnp.asarray(y_train))
    jit = functools.partial(jax.jit, donate_argnums=1, static_argnames="grad_parts",
                            compiler_options=COMPILER_OPTIONS)
    scan_steps, indexed_step = jit(_scan_steps), jit(_indexed_step)

    def run_steps(train_state, batches):
        graphdef, state = train_state
        batches = np.asarray(batches, dtype=np.int32)
        if scan:
            state, losses, corrects = scan_steps(graphdef, state, x, y, batches, grad_parts=grad_parts)
            return (graphdef, state), losses, corrects
        losses, corrects = [], []
        for idx in batches:  # NumPy rows: no device-side slicing op per step
            state, loss, correct = indexed_step(graphdef, state, x, y, idx, grad_parts=grad_parts)
            losses.append(loss)
            corrects.append(correct)
        return (graphdef, state), jnp.stack(losses), jnp.stack(corrects)

    return run_steps


# --------------------------------------------------------------------------- evaluation

@functools.partial(jax.jit, compiler_options=COMPILER_OPTIONS)
def _eval_sums(graphdef, params, images, labels, mask):
    """(sum of losses, number correct) over the examples where `mask` is true."""
    model = nnx.merge(graphdef, params)
    logits = model(images)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    hits = jnp.argmax(logits, axis=-1) == labels
    return jnp.sum(jnp.where(mask, losses, 0.0)), jnp.sum(hits & mask)


def evaluate(model, x: np.ndarray, y: np.ndarray, batch_size: int = 1000):
    """(mean loss, accuracy) over every example of (x, y), in jitted batches of `batch_size`.

    Accepts an NNX model or the `(graphdef, state)` of `nnx.split((model, optimizer))` that
    `run_steps` carries. The last partial batch is padded to `batch_size` and masked, so one
    compiled shape serves all batches; per-batch sums are added in float64 on the host.
    """
    if not isinstance(model, nnx.Module):
        merged = nnx.merge(*model)
        model = merged[0] if isinstance(merged, tuple) else merged
    # Compiled once for all models of an architecture: the graphdef is part of the argument
    # structure and compares equal between models built alike.
    graphdef, params = nnx.split(model)
    return evaluate_in_padded_batches(lambda xb, yb, mask: _eval_sums(graphdef, params, xb, yb, mask),
                                      x, y, batch_size)


# --------------------------------------------------------------------------- the whole run

def train_and_evaluate(config: TrainConfig, splits: Splits, initial_weights: Weights,
                       callbacks=(), checkpoint_dir=None) -> RunResult:
    """Train `config.model` from `initial_weights` on `splits`, test it, return a `RunResult`.

    With `checkpoint_dir` the run resumes from, and saves every epoch to, that directory (Orbax):
    the `state` of `nnx.split((model, optimizer))` (params, opt_state, step; the graphdef is code,
    rebuilt from config).
    """
    check_weights(config.model, initial_weights)
    model = from_weights(config.model, initial_weights)
    optimizer = create_optimizer(model, make_optimizer(config))
    state = nnx.split((model, optimizer))  # (graphdef, state): what run_steps carries
    run_steps = make_run_steps(splits.x_train, splits.y_train, **fast_path(config.model))
    evaluate_fn = functools.partial(evaluate, batch_size=config.eval_batch_size)
    callbacks = CallbackList(callbacks)
    state, rows = fit(config, splits, state, run_steps, evaluate_fn, callbacks, checkpoint_dir,
                      to_saved=lambda s: s[1], from_saved=lambda s, saved: (s[0], saved))
    test_loss, test_accuracy = evaluate_fn(state, splits.x_test, splits.y_test)
    finish(callbacks, test_loss, test_accuracy)
    model, _ = nnx.merge(*state)
    return RunResult(impl=IMPL, config=config, epochs=rows, test_loss=test_loss,
                     test_accuracy=test_accuracy, weights=to_weights(model))
