"""`fmnist bench`: seconds per training epoch of each implementation, measured side by side.

The machines this runs on are shared and noisy (the same compiled epoch can take 0.3 s one minute
and 0.65 s the next), so absolute times mean little. What this measures instead:
  * every implementation, in turn, `--repeats` times, interleaved (A B C A B C ...), so a slow
    minute hits all of them; the figure is each one's median;
  * a fraction of an epoch (`--mlp-steps`, `--cnn-steps` training steps, after a warm-up call
    that compiles), scaled to the full epoch of the default run (55,000 training images);
  * a *bound* per model, in the same run (`fmnist.app.bounds`): for the CNN, the epoch's FLOPs
    (counted from the layer shapes) at the rate this machine reaches on a large matrix product,
    measured in each round; for the MLP, the epoch's matrix products and Adam update alone,
    compiled as one `lax.scan` (its FLOP bound is reported too, as `flop_bound`).
Ratios between figures of one run are the result; `--json` prints them as one object.

Only training steps are timed (validation passes are the same batched evaluation everywhere).
Keras is timed through `model.fit` on the same batches, as a Keras user trains.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Callable

from fmnist import jsonio
from fmnist.config import TrainConfig
from fmnist.data import Splits, load_splits
from fmnist.loop import step_groups, train_loader
from fmnist.weights import init_weights
from fmnist.app import bounds
from fmnist.app.runner import train_module

# model -> (batch size, steps timed per measurement): enough steps that one measurement takes
# about a second for Keras (fit's per-call overhead is then a few percent, as in a real epoch).
DEFAULT_SETUPS = {"mlp": (32, 600), "cnn": (128, 40)}
IMPLS = ("handrolled", "flax", "nnx", "keras")


def _jax_timer(impl: str, config: TrainConfig, splits: Splits, steps: int) -> Callable[[], float]:
    """A zero-argument function that runs `steps` training steps of a JAX implementation, set up by
    its `init_state` as its `train_and_evaluate` trains, and returns the seconds they took, waiting
    until the device has finished."""
    import jax

    weights = init_weights(config.model, config.init, config.seed)
    state, run_steps, _ = train_module(impl).init_state(config, weights, splits.x_train, splits.y_train)
    batches = [b for b in train_loader(config, splits).batch_indices(0) if len(b) == config.batch_size]
    groups = step_groups(batches[:steps], config.steps_per_call)

    def timed() -> float:
        nonlocal state
        start = time.perf_counter()
        for group in groups:
            state, losses, _ = run_steps(state, group)
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


def bench(models=("mlp", "cnn"), impls=IMPLS, repeats: int = 5, steps: dict | None = None,
          splits: Splits | None = None, log=sys.stderr) -> dict:
    """Median seconds per epoch of each implementation (and the MLP bound), interleaved runs."""
    splits = splits if splits is not None else load_splits()
    peak = bounds.peak_timer()
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
            timers["bound"] = bounds.mlp_gemm_timer(config, splits, n)
        epoch_flops = bounds.flops_per_image(model) * len(splits.x_train)
        samples = {name: [] for name in [*timers, "flop_bound", "peak_gflops"]}
        for r in range(repeats):
            for name, timed in timers.items():
                samples[name].append(timed() / n * steps_per_epoch)
            rate = peak()  # the machine's matmul rate in this round, beside the round's timings
            samples["peak_gflops"].append(rate / 1e9)
            samples["flop_bound"].append(epoch_flops / rate)
            if log:
                print(f"[bench] {model} round {r + 1}/{repeats}: "
                      + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in samples.items() if v and k != "peak_gflops")
                      + f"; matmul {rate / 1e9:.0f} GFLOP/s", file=log, flush=True)
        if model == "cnn":  # the CNN's bound is its FLOPs at the matmul rate (the MLP's: its GEMMs, measured)
            samples["bound"] = samples["flop_bound"]
        results[model] = {name: statistics.median(v) for name, v in samples.items()}
        results[model]["samples"] = samples
        results[model]["batch_size"] = batch_size
        results[model]["steps_timed"] = n
        results[model]["steps_per_epoch"] = steps_per_epoch
        results[model]["epoch_tflop"] = epoch_flops / 1e12
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
            if impl in r and "flop_bound" in r and model == "mlp":
                out[model][f"{impl}/flop_bound"] = r[impl] / r["flop_bound"]
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
        out["peak_gflops"] = statistics.median(g for r in results.values() for g in r["samples"]["peak_gflops"])
        out["ratios"] = ratios(results)
        out["ratio_ranges"] = ratio_ranges(results)
        out["machine"] = machine()
        print(jsonio.dumps(out))
    else:
        print(table(results))
        print(f"\nMedians of {repeats} interleaved measurements of "
              + ", ".join(f"{r['steps_timed']} {m} steps" for m, r in results.items())
              + ", scaled to one epoch of 55,000 images.")
        for m, r in results.items():
            print(f"{m}: {r['epoch_tflop']:.3f} TFLOP per epoch; matmul rate {r['peak_gflops']:.0f} GFLOP/s "
                  f"(median of the rounds), so a FLOP bound of {r['flop_bound']:.2f} s per epoch")
    return 0
