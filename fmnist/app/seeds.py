"""`fmnist compare --seeds K`: how far apart the seeds lie, and whether the implementations lie closer.

Seed s = config.seed + i (i = 0..K-1) changes both the canonical starting weights and the batch
order, as `TrainConfig.seed` does everywhere; the data split (`split_seed`) stays the same.

Everything here works on the report's RUN dicts ({"epochs": [rows], "test_loss", "test_accuracy",
...}), so it can be recomputed from report.json and tested on made-up numbers:

  seed_spread       per implementation, metric and epoch: max - min over the seeds
  within_spread     the verdict of one metric: is |a - b| at the same seed inside the seed spread?
  compare_to_spread every implementation against the reference (the first one), metric by metric

The verdict is honest about what it compares: the difference between two implementations trained
from the *same* seed (largest over the seeds), epoch by epoch, against the reference
implementation's seed-to-seed spread at that epoch. "Inside" means at every epoch.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fmnist.config import IMPLEMENTATIONS, TrainConfig

EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
TEST_METRICS = ("test_loss", "test_accuracy")
SEED_LIMIT = 2**32  # TrainConfig's seeds lie in [0, 2**32)


def seed_configs(config: TrainConfig, count: int) -> list[TrainConfig]:
    """`config` with seed config.seed + i for i in 0..count-1 (the first is `config` itself)."""
    if not (isinstance(count, int) and count >= 1):
        raise ValueError(f"the number of seeds must be a positive integer, got {count!r}")
    if config.seed + count > SEED_LIMIT:
        raise ValueError(f"--seed {config.seed} with --seeds {count} needs seeds up to "
                         f"{config.seed + count - 1}; seeds must be below 2**32")
    return [config] + [dataclasses.replace(config, seed=config.seed + i) for i in range(1, count)]


def metric_values(runs: list[dict], metric: str) -> np.ndarray | None:
    """(seeds, epochs) array of `metric`, over the epochs every run finished (None if absent);
    a test metric gives (seeds, 1)."""
    if metric in TEST_METRICS:
        return np.array([[float(run[metric])] for run in runs])
    n = min(len(run["epochs"]) for run in runs)
    if n == 0 or any(metric not in run["epochs"][0] for run in runs):
        return None
    return np.array([[float(row[metric]) for row in run["epochs"][:n]] for run in runs])


def seed_range(runs: list[dict], metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(min, max) over the seeds of `metric`, per epoch (what the picture's band shows)."""
    values = metric_values(runs, metric)
    return None if values is None else (values.min(axis=0), values.max(axis=0))


def seed_spread(runs: list[dict]) -> dict:
    """{metric: [max - min over the seeds, per epoch]} and {test_metric: max - min}."""
    out = {}
    for metric in EPOCH_METRICS + TEST_METRICS:
        values = metric_values(runs, metric)
        if values is not None:
            spread = (values.max(axis=0) - values.min(axis=0)).tolist()
            out[metric] = spread[0] if metric in TEST_METRICS else spread
    return out


def within_spread(diff, spread) -> dict:
    """Verdict of one metric. `diff` and `spread`: per epoch (or one value), the largest |a - b| at
    the same seed and the reference's seed spread. Inside when diff <= spread at every epoch; the
    "tightest" epoch is the one where diff comes closest to (or goes furthest past) the spread."""
    diff, spread = np.atleast_1d(np.asarray(diff, float)), np.atleast_1d(np.asarray(spread, float))
    n = min(len(diff), len(spread))
    diff, spread = diff[:n], spread[:n]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(diff == 0, 0.0, diff / spread)  # diff > 0 against spread 0 is inf
    ratio = np.where(np.isnan(ratio), np.inf, ratio)  # a NaN loss is never inside
    worst = int(np.argmax(ratio))
    outside = [int(e) + 1 for e in np.flatnonzero(ratio > 1)]
    return {"max_diff": float(np.max(diff)), "inside": not outside, "epochs_outside": outside,
            "epochs": n, "tightest_epoch": worst + 1, "diff_at_tightest": float(diff[worst]),
            "spread_at_tightest": float(spread[worst])}


def compare_to_spread(seed_runs: dict[str, list[dict]], reference: str) -> dict:
    """{impl: {metric: within_spread(...)}} for every implementation but `reference`: the largest
    |impl - reference| over the seeds at each epoch, against the reference's seed spread there."""
    out = {}
    for impl, runs in seed_runs.items():
        if impl == reference:
            continue
        verdicts = {}
        for metric in EPOCH_METRICS + TEST_METRICS:
            a, b = metric_values(runs, metric), metric_values(seed_runs[reference], metric)
            if a is None or b is None:
                continue
            n = min(a.shape[1], b.shape[1])
            diff = np.abs(a[:, :n] - b[:, :n]).max(axis=0)
            verdicts[metric] = within_spread(diff, b.max(axis=0) - b.min(axis=0))
        out[impl] = verdicts
    return out


def seed_report(seed_runs: dict[str, list[dict]], seeds: list[int]) -> dict:
    """The report.json keys a run with several seeds adds."""
    impls = [i for i in IMPLEMENTATIONS if i in seed_runs]
    reference = impls[0]
    return {"seeds": list(seeds), "seed_runs": {impl: seed_runs[impl] for impl in impls},
            "seed_spread": {impl: seed_spread(seed_runs[impl]) for impl in impls},
            "seed_verdict": {"reference": reference,
                             "implementations": compare_to_spread(seed_runs, reference)}}


def seed_names(seeds: list[int]) -> str:
    """[0, 1, 2] -> "0..2", [5] -> "5"."""
    return f"{seeds[0]}..{seeds[-1]}" if len(seeds) > 1 else f"{seeds[0]}"


def verdict_line(impl: str, reference: str, metric: str, v: dict) -> str:
    """E.g. "keras vs handrolled: max |Δ val_accuracy| 1.2e-03, inside the seed spread at every
    epoch (tightest: epoch 2, 1.0e-03 vs 4.5e-03)"."""
    head = f"{impl} vs {reference}: max |Δ {metric}| {v['max_diff']:.1e}, "
    at = f"{v['diff_at_tightest']:.1e} vs {v['spread_at_tightest']:.1e}"
    if v["epochs"] == 1:
        return head + ("inside" if v["inside"] else "OUTSIDE") + f" the seed spread ({v['spread_at_tightest']:.1e})"
    if v["inside"]:
        return head + f"inside the seed spread at every epoch (tightest: epoch {v['tightest_epoch']}, {at})"
    return (head + f"OUTSIDE the seed spread at {len(v['epochs_outside'])} of {v['epochs']} epochs "
            f"(worst: epoch {v['tightest_epoch']}, {at})")


def verdict_lines(report: dict) -> list[str]:
    """The verdict of every implementation and metric against the reference; [] with one seed."""
    if "seed_verdict" not in report:
        return []
    reference = report["seed_verdict"]["reference"]
    seeds = report["seeds"]
    lines = [f"Differences at the same seed against {reference}'s seed-to-seed spread "
             f"(max - min over seeds {seed_names(seeds)}):"]
    for impl, verdicts in report["seed_verdict"]["implementations"].items():
        identical = [metric for metric, v in verdicts.items() if v["max_diff"] == 0]
        if identical:
            lines.append(f"{impl} vs {reference}: {', '.join(identical)} identical at every seed")
        lines += [verdict_line(impl, reference, metric, v) for metric, v in verdicts.items()
                  if metric not in identical]
    if len(lines) == 1:
        return lines + ["(one implementation: nothing to compare)"]
    k = len(seeds)
    return lines + [f"(A run that has parted from {reference}'s is in effect one more seed, and one more run "
                    f"falls outside the range of {k} runs with probability 2/{k + 1} by chance alone: "
                    "read how far outside, not only whether; more seeds widen the range.)"]


def spread_table(report: dict) -> str:
    """The seed spread as a Markdown table shaped like `compare.markdown_table`."""
    spread = report["seed_spread"]
    impls = list(spread)
    lines = ["| epoch | metric | " + " | ".join(impls) + " |", "|" + "---|" * (len(impls) + 2)]
    epochs = min((len(s.get("loss", [])) for s in spread.values()), default=0)
    for e in range(epochs):
        for metric in EPOCH_METRICS:
            if all(metric in spread[i] for i in impls):
                lines.append(f"| {e + 1} | {metric} | " + " | ".join(f"{spread[i][metric][e]:.1e}" for i in impls) + " |")
    for metric in TEST_METRICS:
        lines.append(f"| test | {metric.removeprefix('test_')} | "
                     + " | ".join(f"{spread[i][metric]:.1e}" for i in impls) + " |")
    return "\n".join(lines)
