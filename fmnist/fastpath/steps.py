"""The fast path's training steps, shared by every JAX implementation.

* `in_slices(loss_and_grads, parts)`: a batch's loss and gradient computed over `parts` slices,

      mean loss = sum_k (n_k / n) * mean_k,   grad = sum_k (n_k / n) * grad_k,

  the same quantities added in another order (float32 rounding only). XLA:CPU runs the slices'
  independent work side by side, one core each.
* `make_run_steps(train_step, x_train, y_train, scan)`: `run_steps(state, batches)` for
  `fmnist.loop.fit`. The training set is copied to the device once and each batch gathered there by
  index; the K steps of a call are one compiled `lax.scan` (scan=True) or a Python loop of single
  compiled steps, the state buffers donated (updated in place), compiled with `COMPILER_OPTIONS`.
  With `devices=N > 1`, data parallel over N devices (`fmnist.fastpath.sharding`): the same
  compiled steps, each batch's rows split over the devices, the state replicated.

Which settings each model trains with is `fmnist.fastpath.xla.fast_path`; why, docs/performance.md.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fmnist.fastpath.sharding import DataParallel
from fmnist.fastpath.xla import COMPILER_OPTIONS, SCAN_UNROLL

__all__ = ["in_slices", "make_run_steps"]


def in_slices(loss_and_grads: Callable, parts: int) -> Callable:
    """`loss_and_grads(params, images, labels) -> ((mean loss, correct), grads)`, computed over `parts` slices.

    With one part (or fewer examples than parts) it is `loss_and_grads` itself.
    """
    def sliced(params, images, labels):
        n = images.shape[0]
        if parts == 1 or n < parts:
            return loss_and_grads(params, images, labels)
        bounds = [n * k // parts for k in range(parts + 1)]
        loss, correct, grads = 0.0, 0, None
        for a, b in zip(bounds[:-1], bounds[1:]):
            (part_loss, part_correct), part_grads = loss_and_grads(params, images[a:b], labels[a:b])
            w = (b - a) / n
            loss, correct = loss + w * part_loss, correct + part_correct
            part_grads = jax.tree.map(lambda g: w * g, part_grads)
            grads = part_grads if grads is None else jax.tree.map(jnp.add, grads, part_grads)
        return (loss, correct), grads
    return sliced


def make_run_steps(train_step: Callable, x_train: np.ndarray, y_train: np.ndarray, scan: bool = True,
                   devices: int = 1):
    """`run_steps(state, batches) -> (state, losses (K,), corrects (K,))` from a pure
    `train_step(state, images, labels) -> (state, loss, correct)`.

    `batches` is a (K, B) int array of row indices into `x_train`/`y_train`. The state is donated:
    the caller must use the returned state, not the one passed in. With `devices > 1` the steps run
    data parallel over the first `devices` devices (`fmnist.fastpath.sharding.DataParallel`); the
    state returned is then replicated over them (`np.asarray` of any of its arrays works).
    """
    if devices > 1:
        return _data_parallel_run_steps(train_step, x_train, y_train, scan, DataParallel(devices))
    # The arrays are arguments of the compiled functions, not constants captured by closure: a
    # captured training set is baked into every compiled program (docs/performance.md).
    x_all, y_all = jax.device_put(jnp.asarray(x_train)), jax.device_put(jnp.asarray(y_train))
    jit = functools.partial(jax.jit, donate_argnums=0, compiler_options=COMPILER_OPTIONS)
    return _run_steps(train_step, x_all, y_all, scan, jit, place_state=None, place_batches=None)


def _data_parallel_run_steps(train_step, x_train, y_train, scan, dp: DataParallel):
    """`make_run_steps` over `dp`'s devices: the training set and the state replicated, each
    batch's rows split (the compiler adds the all-reduce of the partial gradients)."""
    x_all, y_all = dp.replicate(np.asarray(x_train)), dp.replicate(np.asarray(y_train))
    jit = functools.partial(jax.jit, donate_argnums=0, compiler_options=COMPILER_OPTIONS,
                            out_shardings=dp.replicated)

    def sharded_step(state, images, labels):
        return train_step(state, dp.rows(images), dp.rows(labels))
    return _run_steps(sharded_step, x_all, y_all, scan, jit, place_state=dp.replicate,
                      place_batches=dp.batch_indices)


def _run_steps(train_step, x_all, y_all, scan, jit, place_state, place_batches):
    @jit
    def scan_steps(state, x_all, y_all, batches):
        def body(state, idx):
            state, loss, correct = train_step(state, x_all[idx], y_all[idx])
            return state, (loss, correct)
        state, (losses, corrects) = jax.lax.scan(body, state, batches, unroll=SCAN_UNROLL)
        return state, losses, corrects

    @jit
    def indexed_step(state, x_all, y_all, idx):
        return train_step(state, x_all[idx], y_all[idx])

    def run_steps(state, batches):
        batches = np.asarray(batches, dtype=np.int32)
        if place_state is not None:
            state = place_state(state)
        if scan:
            return scan_steps(state, x_all, y_all, batches if place_batches is None else place_batches(batches))
        losses, corrects = [], []
        for idx in batches:  # NumPy rows: no device-side slicing op per step
            idx = idx if place_batches is None else place_batches(idx)
            state, loss, correct = indexed_step(state, x_all, y_all, idx)
            losses.append(loss)
            corrects.append(correct)
        return state, jnp.stack(losses), jnp.stack(corrects)

    return run_steps
