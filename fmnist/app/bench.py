"""`fmnist bench`: seconds per training epoch of each implementation, measured side by side.

The machines this runs on are shared and noisy (the same compiled epoch can take 0.3 s one minute
and 0.65 s the next), so absolute times mean little. What this measures instead:
  * every implementation, in turn, `--repeats` times, interleaved (A B C A B C ...), so a slow
    minute hits all of them; the figure is each one's median;
  * a fraction of an epoch (`--steps` training steps, after a warm-up call that compiles), scaled
    to the full epoch of the default run (55,000 training images);
  * for the MLP, the *bound*: the epoch's matrix products (forward and backward) and the Adam
    update alone, compiled as one `lax.scan` at the same shapes, measured in the same run.
Ratios between figures of one run are the result; `--json` prints them as one object.

Only training steps are timed (validation passes are the same batched evaluation everywhere).
Keras is timed through `model.fit` on the same batches, as a Keras user trains.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Callable

import numpy as np

from fmnist import jsonio
from fmnist.config import TrainConfig
from fmnist.data import Splits, load_splits
from fmnist.loop import step_groups, train_loader
from fmnist.weights import init_weights
from fmnist.fastpath.xla import COMPILER_OPTIONS, SCAN_UNROLL

# model -> (batch size, steps timed per measurement): enough steps that one measurement takes
# about a second for Keras (fit's per-call overhead is then a few percent, as in a real epoch).
DEFAULT_SETUPS = {"mlp": (32, 600), "cnn": (128, 40)}
IMPLS = ("handrolled", "flax", "nnx", "keras")


def _jax_timer(impl: str, config: TrainConfig, splits: Splits, steps: int) -> Callable[[], float]:
    """A zero-argument function that runs `steps` training steps of a JAX implementation and
    returns the seconds they took, waiting until the device has finished."""
    import jax

    weights = init_weights(config.model, config.init, config.seed)
    if impl == "handrolled":  # each as its train_and_evaluate sets up (the fast path by default)
        from handrolled import train as t
        from handrolled.models import from_weights
        model = from_weights(config.model, weights, fast=config.fast)
        optimizer = t.make_optimizer(config)
        state = [(model, optimizer.init(model))]
        run_steps = t.make_run_steps(config, optimizer, splits.x_train, splits.y_train)
    elif impl == "flax":
        from flax_impl import train as t
        from flax_impl.fast_layers import fast_layers
        from flax_impl.models import build_model, from_weights
        model = build_model(config.model, **(fast_layers(config.model) if config.fast else {}))
        state = [t.create_train_state(model, from_weights(config.model, weights), t.make_optimizer(config))]
        run_steps = t.make_run_steps(config, splits.x_train, splits.y_train)
    elif impl == "nnx":
        from flax import nnx

        from nnx_impl import train as t
        from nnx_impl.fast_layers import fast_layers
        from nnx_impl.models import from_weights
        model = from_weights(config.model, weights, **(fast_layers(config.model) if config.fast else {}))
        graphdef, nnx_state = nnx.split((model, t.create_optimizer(model, t.make_optimizer(config))))
        state = [nnx_state]
        run_steps = t.make_run_steps(config, graphdef, splits.x_train, splits.y_train)
    else:
        raise ValueError(f"no benchmark timer for implementation {impl!r}")
    batches = [b for b in train_loader(config, splits).batch_indices(0) if len(b) == config.batch_size]
    groups = step_groups(batches[:steps], config.steps_per_call)

    def timed() -> float:
        start = time.perf_counter()
        for group in groups:
            state[0], losses, _ = run_steps(state[0], group)
        jax.block_until_ready(losses)
        return time.perf_counter() - start

    timed()  # compile
    return timed


def _keras_timer(config: TrainConfig, splits: Splits, steps: int) -> Callable[[], float]:
    from keras_baseline.train import compiled_model

    model = compiled_model(config, init_weights(config.model, config.init, config.seed))
    order = train_loader(config, splits).epoch_order(0)[:steps * config.batch_size]
    x, y = splits.x_train[order], splits.y_train[order]

    def timed() -> float:
        start = time.perf_counter()
        model.fit(x, y, batch_size=config.batch_size, epochs=1, shuffle=False, verbose=0)
        return time.perf_counter() - start

    timed()  # trace and compile
    return timed


def _bound_timer(config: TrainConfig, splits: Splits, steps: int) -> Callable[[], float]:
    """The MLP's matrix products and Adam update alone, `steps` times, as one compiled scan.

    Per step: h = x W1 (B,784)x(784,128); z = h W2 (B,128)x(128,10); backward dW2 = h^T dz,
    dh = dz W2^T, dW1 = x^T dh; then Adam on the four parameters. No bias, relu, softmax or
    loss: what is left when everything but the arithmetic-heavy work is free.
    """
    import jax
    import jax.numpy as jnp

    b = config.batch_size
    w = init_weights("mlp", config.init, config.seed)
    params = {k: jnp.asarray(w[l][p]) for l in w for p in ("kernel", "bias")
              for k in [f"{l}/{p}"]}
    x_all = jnp.asarray(splits.x_train.reshape(len(splits.x_train), -1))
    batches = jnp.asarray(np.stack([bi for bi in train_loader(config, splits).batch_indices(0)
                                    if len(bi) == b][:steps]))
    def step(carry, idx):
        p, m, v = carry
        x = x_all[idx]
        h = x @ p["dense_0/kernel"]
        z = h @ p["dense_1/kernel"]
        dz = z * 1e-2  # stands in for the loss gradient, so the backward products depend on z
        g = {"dense_1/kernel": h.T @ dz, "dense_0/kernel": x.T @ (dz @ p["dense_1/kernel"].T),
             "dense_0/bias": p["dense_0/bias"] * 0, "dense_1/bias": p["dense_1/bias"] * 0}
        m = jax.tree.map(lambda m, g: m + (g - m) * 0.1, m, g)
        v = jax.tree.map(lambda v, g: v + (g * g - v) * 0.001, v, g)
        p = jax.tree.map(lambda p, m, v: p - 1e-3 * m / (jnp.sqrt(v) + 1e-7), p, m, v)
        return (p, m, v), z[0, 0]

    zeros = jax.tree.map(jnp.zeros_like, params)
    # The same loop structure and compiler options as the implementations' scans (fmnist.fastpath.xla), so
    # the bound gets every advantage they get.
    run = jax.jit(lambda carry, batches: jax.lax.scan(step, carry, batches, unroll=SCAN_UNROLL),
                  compiler_options=COMPILER_OPTIONS)
    carry = [(params, zeros, zeros)]

    def timed() -> float:
        start = time.perf_counter()
        carry[0], out = run(carry[0], batches)
        jax.block_until_ready(out)
        return time.perf_counter() - start

    timed()
    return timed


def bench(models=("mlp", "cnn"), impls=IMPLS, repeats: int = 5, steps: dict | None = None,
          splits: Splits | None = None, log=sys.stderr) -> dict:
    """Median seconds per epoch of each implementation (and the MLP bound), interleaved runs."""
    splits = splits if splits is not None else load_splits()
    steps = {**{m: s for m, (_, s) in DEFAULT_SETUPS.items()}, **(steps or {})}
    results: dict = {}
    for model in models:
        batch_size = DEFAULT_SETUPS[model][0]
        config = TrainConfig(model=model, batch_size=batch_size)
        n = min(steps[model], len(splits.x_train) // batch_size)  # full batches only, at most one epoch
        steps_per_epoch = -(-len(splits.x_train) // batch_size)
        timers = {}
        for impl in impls:
            if log:
                print(f"[bench] {model}: compiling {impl}", file=log, flush=True)
            timers[impl] = (_keras_timer(config, splits, n) if impl == "keras"
                            else _jax_timer(impl, config, splits, n))
        if model == "mlp":
            timers["bound"] = _bound_timer(config, splits, n)
        samples = {name: [] for name in timers}
        for r in range(repeats):
            for name, timed in timers.items():
                samples[name].append(timed() / n * steps_per_epoch)
            if log:
                print(f"[bench] {model} round {r + 1}/{repeats}: "
                      + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in samples.items()), file=log, flush=True)
        results[model] = {name: statistics.median(v) for name, v in samples.items()}
        results[model]["samples"] = samples
        results[model]["batch_size"] = batch_size
        results[model]["steps_timed"] = n
        results[model]["steps_per_epoch"] = steps_per_epoch
    return results


def ratios(results: dict) -> dict:
    """Speed-ups over Keras and distance from the bound, per model."""
    out = {}
    for model, r in results.items():
        out[model] = {}
        for impl in ("handrolled", "flax", "nnx"):
            if impl in r and "keras" in r:
                out[model][f"keras/{impl}"] = r["keras"] / r[impl]
            if impl in r and "bound" in r:
                out[model][f"{impl}/bound"] = r[impl] / r["bound"]
    return out


def ratio_ranges(results: dict) -> dict:
    """[min, max] over the rounds of each ratio in `ratios`, taken within a round.

    The implementations of one round run back to back, so a round's ratio compares them under the
    same load; the spread over rounds shows how far a shared machine moves a ratio, which the
    medians alone hide.
    """
    out = {}
    for model, r in results.items():
        samples, out[model] = r["samples"], {}
        for name in ratios({model: r})[model]:
            a, b = name.split("/")
            per_round = [x / y for x, y in zip(samples[a], samples[b])]
            out[model][name] = [min(per_round), max(per_round)]
    return out


def table(results: dict) -> str:
    """A Markdown table of the medians and ratios, each ratio with its range over the rounds."""
    rat, spread = ratios(results), ratio_ranges(results)
    lines = ["| model | batch | handrolled s/epoch | flax s/epoch | nnx s/epoch | keras s/epoch | bound s/epoch "
             "| ratios (range over rounds) |",
             "|---|---|---|---|---|---|---|---|"]
    for model, r in results.items():
        cell = lambda k: f"{r[k]:.2f}" if k in r else "-"  # noqa: E731
        cells = ", ".join(f"{k} {v:.2f}x ({spread[model][k][0]:.2f}-{spread[model][k][1]:.2f})"
                          for k, v in rat[model].items())
        lines.append(f"| {model} | {r['batch_size']} | {cell('handrolled')} | {cell('flax')} | {cell('nnx')} | {cell('keras')} | "
                     f"{cell('bound')} | {cells} |")
    return "\n".join(lines)


def machine() -> dict:
    import os
    import platform
    info = {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import jax
        info["jax_backend"] = jax.default_backend()
        info["jax_devices"] = [str(d) for d in jax.devices()]
    except ImportError:
        pass
    return info


def main_bench(models, impls, repeats, steps, as_json: bool, splits: Splits | None = None) -> int:
    """`fmnist bench`: print the table (or, with `as_json`, one JSON object) of `bench(...)`."""
    results = bench(models, impls, repeats, steps, splits)
    if as_json:
        out = {m: {k: v for k, v in r.items()} for m, r in results.items()}
        out["ratios"] = ratios(results)
        out["ratio_ranges"] = ratio_ranges(results)
        out["machine"] = machine()
        print(jsonio.dumps(out))
    else:
        print(table(results))
        print(f"\nMedians of {repeats} interleaved measurements of "
              + ", ".join(f"{r['steps_timed']} {m} steps" for m, r in results.items())
              + ", scaled to one epoch of 55,000 images.")
    return 0
