"""Training with Flax + Optax, in the shape of Flax's examples/mnist, plus the project's fast path.

    state = create_train_state(model, params, tx)        # flax.training.train_state.TrainState
    state, loss, correct = train_step(state, images, labels)
    loss, correct = eval_step(state, images, labels)

loss = mean over the batch of softmax cross-entropy from logits,
       l_i = logsumexp(z_i) - z_i[y_i]      (`optax.softmax_cross_entropy_with_integer_labels`),
computed with the parameters *before* the update (what Keras reports); correct = #{i: argmax z_i = y_i}.

Fast path (`make_run_steps`): the training set is copied to the device once, and one jitted call
runs K steps, gathering each batch on the device (`x[idx]`) from a (K, B) int32 index array. Per
model, the K steps are either a `lax.scan` (one dispatch, one host sync per K steps) or a Python
loop of single jitted steps: XLA's CPU backend runs convolution gradients inside `scan`/`while`
bodies far slower than at the top level (jax-ml/jax#12868), so the CNN uses the loop. Numbers at
`fmnist.xla.SCAN_BY_MODEL`.

`train_and_evaluate` drives this through the shared epoch loop `fmnist.loop.fit`, so batch order,
running metrics, validation, callbacks and history mean the same as in the hand-rolled version.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax import lax

from fmnist.callbacks import CallbackList
from fmnist.config import TrainConfig
from fmnist.data import Splits
from fmnist.history import RunResult
from fmnist.loop import evaluate_in_padded_batches, finish, fit
from fmnist.weights import Weights, check_weights
from fmnist.xla import COMPILER_OPTIONS, SCAN_UNROLL, fast_path  # settings and measurements: fmnist/xla.py

from flax_impl.models import get_model, params_to_weights, weights_to_params
from flax_impl.optimizers import make_optimizer

IMPL = "flax"


def create_train_state(model, params, tx: optax.GradientTransformation) -> train_state.TrainState:
    """A `TrainState` (step, apply_fn, params, tx, opt_state) starting from `params`."""
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    # `create` sets step = 0, a Python int; as an int32 array from the start, the first jitted call
    # sees the same argument types as every later one and compiles once, not twice.
    return state.replace(step=jnp.zeros((), jnp.int32))


def _loss_and_logits(params, apply_fn, images, labels):
    logits = apply_fn({"params": params}, images)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, logits


def _correct(logits, labels):
    return jnp.sum(jnp.argmax(logits, axis=-1) == labels)


def _loss_and_grads(state, images, labels, parts: int = 1):
    """((mean loss, correct), grads of the mean loss) of a batch, computed over `parts` slices.

    mean loss = sum_k (n_k / n) * mean_k over slices of n_k examples, likewise the gradient: the same
    quantity, summed in another order. XLA:CPU runs the slices' independent computations
    concurrently, one core each, which keeps the second core busy during the CNN's single-core
    element-wise work (numbers at `fmnist.xla.GRAD_PARTS_BY_MODEL`).
    """
    grad_fn = jax.value_and_grad(_loss_and_logits, has_aux=True)
    n = images.shape[0]
    if parts == 1 or n < parts:
        (loss, logits), grads = grad_fn(state.params, state.apply_fn, images, labels)
        return (loss, _correct(logits, labels)), grads
    bounds = [n * k // parts for k in range(parts + 1)]
    loss, correct, grads = 0.0, 0, None
    for a, b in zip(bounds[:-1], bounds[1:]):
        (part_loss, logits), part_grads = grad_fn(state.params, state.apply_fn, images[a:b], labels[a:b])
        w = (b - a) / n
        loss, correct = loss + w * part_loss, correct + _correct(logits, labels[a:b])
        part_grads = jax.tree.map(lambda g: w * g, part_grads)
        grads = part_grads if grads is None else jax.tree.map(jnp.add, grads, part_grads)
    return (loss, correct), grads


def _train_step(state, images, labels, grad_parts: int = 1):
    """One step: grads of the mean batch loss, then `tx`'s update; loss/correct are pre-update."""
    (loss, correct), grads = _loss_and_grads(state, images, labels, grad_parts)
    return state.apply_gradients(grads=grads), loss, correct


train_step = jax.jit(_train_step, static_argnames="grad_parts", compiler_options=COMPILER_OPTIONS)
train_step.__doc__ = "train_step(state, images, labels, grad_parts=1) -> (state, loss, correct), jitted."


@functools.partial(jax.jit, compiler_options=COMPILER_OPTIONS)
def eval_step(state, images, labels):
    """(mean loss, number correct) on one batch, no update."""
    loss, logits = _loss_and_logits(state.params, state.apply_fn, images, labels)
    return loss, _correct(logits, labels)


# --------------------------------------------------------------------------- fast path

def _scan_steps(state, x, y, batches, grad_parts=1):
    """K steps as one `lax.scan`; batch k is (x[batches[k]], y[batches[k]]), gathered on device."""
    def body(state, idx):
        state, loss, correct = _train_step(state, x[idx], y[idx], grad_parts)
        return state, (loss, correct)

    state, (losses, corrects) = lax.scan(body, state, batches, unroll=SCAN_UNROLL)
    return state, losses, corrects


def _indexed_step(state, x, y, idx, grad_parts=1):
    """One step on batch (x[idx], y[idx]), gathered on device."""
    return _train_step(state, x[idx], y[idx], grad_parts)


def make_run_steps(x_train: np.ndarray, y_train: np.ndarray, scan: bool = True, grad_parts: int = 1):
    """`run_steps(state, batches) -> (state, losses (K,), corrects (K,))` for `fmnist.loop.fit`.

    `x_train`, `y_train` are copied to the device here, once; each call then only sends the (K, B)
    int32 index array. The state is donated: the caller must use the returned state, not the old one.
    With `scan`, the K steps are one `_scan_steps` call; otherwise a Python loop dispatches K jitted
    `_indexed_step`s without waiting on them. Both are jitted here, as in the hand-rolled version
    (a new run compiles anyway: each `TrainState` brings its own `apply_fn`).
    `fmnist.xla.fast_path(model)` gives the settings training uses.
    """
    x, y = jax.device_put(jnp.asarray(x_train)), jax.device_put(jnp.asarray(y_train))
    jit = functools.partial(jax.jit, donate_argnums=0, static_argnames="grad_parts",
                            compiler_options=COMPILER_OPTIONS)
    scan_steps, indexed_step = jit(_scan_steps), jit(_indexed_step)

    def run_steps(state, batches):
        batches = np.asarray(batches, dtype=np.int32)
        if scan:
            return scan_steps(state, x, y, batches, grad_parts=grad_parts)
        losses, corrects = [], []
        for idx in batches:  # NumPy rows: no device-side slicing op per step
            state, loss, correct = indexed_step(state, x, y, idx, grad_parts=grad_parts)
            losses.append(loss)
            corrects.append(correct)
        return state, jnp.stack(losses), jnp.stack(corrects)

    return run_steps


# --------------------------------------------------------------------------- evaluation

# One bound `apply` per model for bare params: a static jit argument is cached by equality, and two
# `MLP().apply` bound methods are not equal, so a fresh one per call would recompile every call.
_APPLY = {name: get_model(name).apply for name in ("mlp", "cnn")}


@functools.partial(jax.jit, static_argnums=0, compiler_options=COMPILER_OPTIONS)
def _eval_sums(apply_fn, params, images, labels, mask):
    """(sum of losses, number correct) over the examples where `mask` is true."""
    logits = apply_fn({"params": params}, images)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    hits = jnp.argmax(logits, axis=-1) == labels
    return jnp.sum(jnp.where(mask, losses, 0.0)), jnp.sum(hits & mask)


def evaluate(state_or_params, x: np.ndarray, y: np.ndarray, batch_size: int = 1000):
    """(mean loss, accuracy) over every example of (x, y), in jitted batches of `batch_size`.

    Accepts a `TrainState` or a bare params dict (the model is then read off its layer names). The
    last partial batch is padded to `batch_size` and masked, so one compiled shape serves all
    batches; per-batch sums are added in float64 on the host.
    """
    if isinstance(state_or_params, train_state.TrainState):
        apply_fn, params = state_or_params.apply_fn, state_or_params.params
    else:
        params = state_or_params
        apply_fn = _APPLY["cnn" if "conv_0" in params else "mlp"]
    return evaluate_in_padded_batches(lambda xb, yb, mask: _eval_sums(apply_fn, params, xb, yb, mask),
                                      x, y, batch_size)


# --------------------------------------------------------------------------- the whole run

def train_and_evaluate(config: TrainConfig, splits: Splits, initial_weights: Weights,
                       callbacks=(), checkpoint_dir=None) -> RunResult:
    """Train `config.model` from `initial_weights` on `splits`, test it, return a `RunResult`.

    With `checkpoint_dir` the run resumes from, and saves every epoch to, that directory (Orbax):
    the TrainState's arrays (step, params, opt_state; apply_fn and tx are code, rebuilt from config).
    """
    check_weights(config.model, initial_weights)
    model = get_model(config.model)
    state = create_train_state(model, weights_to_params(initial_weights), make_optimizer(config))
    run_steps = make_run_steps(splits.x_train, splits.y_train, **fast_path(config.model))
    evaluate_fn = functools.partial(evaluate, batch_size=config.eval_batch_size)
    callbacks = CallbackList(callbacks)
    state, rows = fit(config, splits, state, run_steps, evaluate_fn, callbacks, checkpoint_dir,
                      to_saved=lambda s: {"step": s.step, "params": s.params, "opt_state": s.opt_state},
                      from_saved=lambda s, saved: s.replace(**saved))
    test_loss, test_accuracy = evaluate_fn(state, splits.x_test, splits.y_test)
    finish(callbacks, test_loss, test_accuracy)
    return RunResult(impl=IMPL, config=config, epochs=rows, test_loss=test_loss,
                     test_accuracy=test_accuracy, weights=params_to_weights(state.params))
