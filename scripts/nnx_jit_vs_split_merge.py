"""Time per-call `nnx.jit` against split/merge with a plain `jax.jit` (nnx_impl.train's fast path).

    python scripts/nnx_jit_vs_split_merge.py [--rounds 7]

The same training steps (nnx_impl.train.train_step with the gradient in slices, Keras-convention Adam, the shared batch order)
three ways, interleaved A B C A B C ... so a slow minute on a shared machine hits all of them:
  nnx.jit        the objects go in, `nnx.jit` splits and merges them in Python on every call
  cached_partial `nnx.cached_partial(that nnx.jit function, model, optimizer)`: the graph traversal
                 cached (Flax's performance guide), the same compiled program
  split/merge    `graphdef, state = nnx.split((model, optimizer))` once, `jax.jit` merging inside
  split/merge+o  the same with fmnist.fastpath.xla.COMPILER_OPTIONS (what `make_run_steps` does; `nnx.jit`
                 accepts no compiler options, so only the first two are like for like)
for the MLP (batch 32, K = 100 steps in one `lax.scan` per call, as trained; and one step per call,
where the call's own cost shows) and the CNN (batch 32, one step per call, the CNN's loop; the
gradient in 2 slices, as trained). Prints medians and
ranges of wall time and of process CPU time (all threads; less moved by other load on a shared box).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
from flax import nnx
from jax import lax

from flax_impl.optimizers import make_optimizer
from fmnist.config import TrainConfig
from fmnist.data import load_splits
from fmnist.loop import train_loader
from fmnist.weights import init_weights
from fmnist.fastpath.steps import in_slices
from fmnist.fastpath.xla import COMPILER_OPTIONS, SCAN_UNROLL, fast_path
from nnx_impl.fast_layers import fast_layers
from nnx_impl.models import from_weights
from nnx_impl.train import create_optimizer, loss_and_grads, train_step


def timers(model_name, scan, splits, calls, options):
    config = TrainConfig(model=model_name, batch_size=32)
    grads_fn = in_slices(loss_and_grads, fast_path(model_name)["grad_parts"])
    x, y = jax.device_put(splits.x_train), jax.device_put(splits.y_train)
    batches = np.stack(train_loader(config, splits).batch_indices(0)[:100]).astype(np.int32)

    def fresh():
        model = from_weights(model_name, init_weights(model_name), **fast_layers(model_name))
        return model, create_optimizer(model, make_optimizer(config))

    def body(graphdef):
        def f(state, idx):
            model, optimizer = nnx.merge(graphdef, state)
            out = train_step(model, optimizer, x[idx], y[idx], grads_fn)
            return nnx.state((model, optimizer)), out
        return f

    # nnx.jit: objects in, updated in place
    @nnx.jit(donate_argnums=(0, 1))
    def nnx_scan(model, optimizer, batches):
        graphdef, state = nnx.split((model, optimizer))
        state, out = lax.scan(body(graphdef), state, batches, unroll=SCAN_UNROLL)
        nnx.update((model, optimizer), state)
        return out

    @nnx.jit(donate_argnums=(0, 1))
    def nnx_step(model, optimizer, idx):
        return train_step(model, optimizer, x[idx], y[idx], grads_fn)

    # split/merge: state in, state out
    def sm_scan(graphdef, state, batches):
        return lax.scan(body(graphdef), state, batches, unroll=SCAN_UNROLL)

    def sm_step(graphdef, state, idx):
        return body(graphdef)(state, idx)

    def make_nnx(cached):
        model, optimizer = fresh()
        fn = nnx_scan if scan else nnx_step
        if cached:
            fn = nnx.cached_partial(fn, model, optimizer)
        args = (model, optimizer) if not cached else ()

        def run():
            if scan:
                for _ in range(calls):
                    out = fn(*args, batches)
            else:
                for idx in batches[:calls]:
                    out = fn(*args, idx)
            jax.block_until_ready(out)
        return run

    def make_sm(compiler_options):
        fn = jax.jit(sm_scan if scan else sm_step, donate_argnums=1, compiler_options=compiler_options)
        graphdef, state = nnx.split(fresh())
        box = [state]

        def run():
            for i in range(calls):
                box[0], out = fn(graphdef, box[0], batches if scan else batches[i])
            jax.block_until_ready(out)
        return run

    runs = {"nnx.jit": make_nnx(False), "cached_partial": make_nnx(True), "split/merge": make_sm(None)}
    if options:
        runs["split/merge+o"] = make_sm(COMPILER_OPTIONS)
    for run in runs.values():
        run()  # compile
    return runs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-options", action="store_true")
    args = parser.parse_args()
    splits = load_splits(val_size=1000, train_limit=4000, test_limit=100)
    print(f"jax {jax.__version__}, flax {nnx.__name__ and __import__('flax').__version__}")
    cases = (("mlp", True, 5, "ms/call of 100 steps (as trained)"),
             ("mlp", False, 100, "ms/call of 1 step (dispatch-bound: shows the per-call cost)"),
             ("cnn", False, 40, "ms/step (as trained)"))
    for model_name, scan, calls, unit in cases:
        runs = timers(model_name, scan, splits, calls, not args.no_options)
        wall, cpu = {k: [] for k in runs}, {k: [] for k in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                run()
                wall[name].append((time.perf_counter() - start) / calls * 1e3)
                cpu[name].append((time.process_time() - start_cpu) / calls * 1e3)
        for what, samples in (("wall", wall), ("cpu (all threads)", cpu)):
            print(model_name, what, unit + ":", ", ".join(
                f"{k} {statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})" for k, v in samples.items()))


if __name__ == "__main__":
    main()
