"""`fmnist compare`: train every implementation from the same weights and batch order, side by side.

Writes into the output directory:
  report.json  {"config": ..., "handrolled": RUN, "flax": RUN, ..., "differences": {...}}
               RUN = {"epochs": [...train schema rows...], "test_loss", "test_accuracy",
                      "seconds_per_epoch"}; differences = per pair, the largest |a - b| of each metric
               over the epochs, of the test results, and of the final parameters.
  report.md    the per-epoch table a person reads
  curves.png   the implementations' curves overlaid, and each one's difference from the first (log scale)

With `seeds=K` > 1 every implementation also trains from seeds config.seed + 1 .. + K-1 (new
weights and batch order; `fmnist.app.seeds`): the report and the curves stay those of the first
seed, and report.json gains "seeds", "seed_runs" (every seed's RUN), "seed_spread" (max - min over
the seeds) and "seed_verdict" (are the differences at the same seed inside the seed spread?);
report.md and curves.png show the spread and the verdict.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from fmnist import jsonio
from fmnist.app import runner, seeds as seeds_mod
from fmnist.callbacks import ProgressBar
from fmnist.config import IMPLEMENTATIONS, TrainConfig
from fmnist.data import Splits
from fmnist.history import RunResult, versions
from fmnist.weights import init_weights, max_abs_diff

METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def run_all(config: TrainConfig, splits: Splits, impls=IMPLEMENTATIONS, callbacks_for=None,
            stream=None, heading: str = "") -> dict[str, RunResult]:
    """Train each implementation in turn from the same canonical weights (`heading` follows each
    implementation's name in the progress, e.g. ", seed 1 (2 of 3)")."""
    runner.preflight(impls, config)  # fail now, not after the first implementations have trained
    initial = init_weights(config.model, config.init, config.seed)
    results = {}
    for impl in impls:
        if stream is not None:
            stream.write(f"\n=== {impl}{heading} ===\n")
            stream.flush()
        callbacks = callbacks_for(impl) if callbacks_for else [ProgressBar(stream)]
        results[impl] = runner.run(impl, config, splits, initial, callbacks)
    return results


def differences(results: dict[str, RunResult]) -> dict[str, dict[str, float]]:
    """For each pair "a-b": the largest |a - b| per metric over epochs, test results and weights."""
    out = {}
    for a, b in itertools.combinations(results, 2):
        ra, rb = results[a], results[b]
        diff = {}
        for metric in METRICS:
            pairs = [(x[metric], y[metric]) for x, y in zip(ra.epochs, rb.epochs) if metric in x and metric in y]
            if pairs:
                diff[metric] = max(abs(x - y) for x, y in pairs)
        diff["test_loss"] = abs(ra.test_loss - rb.test_loss)
        diff["test_accuracy"] = abs(ra.test_accuracy - rb.test_accuracy)
        diff["weights"] = max_abs_diff(ra.weights, rb.weights)
        out[f"{a}-{b}"] = diff
    return out


def run_report(r: RunResult) -> dict:
    """The RUN dict of one implementation's run in report.json."""
    return {"epochs": r.to_json()["epochs"], "test_loss": float(r.test_loss),
            "test_accuracy": float(r.test_accuracy), "seconds_per_epoch": float(r.seconds_per_epoch)}


def build_report(config: TrainConfig, results: dict[str, RunResult],
                 more_seeds: list[dict[str, RunResult]] = ()) -> dict:
    """report.json of `results` (trained with `config`); `more_seeds`: the same implementations
    trained from the next seeds, which add the seed keys (see the module docstring)."""
    report = {"config": config.to_dict(),
              "versions": {impl: versions(impl) for impl in results}}
    for impl, r in results.items():
        report[impl] = run_report(r)
    report["differences"] = differences(results)
    if more_seeds:
        seed_runs = {impl: [report[impl]] + [run_report(rs[impl]) for rs in more_seeds] for impl in results}
        seeds = [config.seed] + [next(iter(rs.values())).config.seed for rs in more_seeds]
        report.update(seeds_mod.seed_report(seed_runs, seeds))
    return report


def markdown_table(report: dict) -> str:
    """The per-epoch comparison as a Markdown table (also printed at the end of `fmnist compare`)."""
    impls = [i for i in IMPLEMENTATIONS if i in report]
    head = "| epoch | metric | " + " | ".join(impls) + " | max abs diff |"
    lines = [head, "|" + "---|" * (len(impls) + 3)]

    def row(label, metric, values):
        spread = max(values) - min(values)
        return f"| {label} | {metric} | " + " | ".join(f"{v:.4f}" for v in values) + f" | {spread:.1e} |"

    for e in range(min(len(report[i]["epochs"]) for i in impls)):
        for metric in METRICS:
            if metric in report[impls[0]]["epochs"][e]:
                lines.append(row(e + 1, metric, [report[i]["epochs"][e][metric] for i in impls]))
    for metric in ("test_loss", "test_accuracy"):
        lines.append(row("test", metric.removeprefix("test_"), [report[i][metric] for i in impls]))
    lines.append("| time | s/epoch | " + " | ".join(f"{report[i]['seconds_per_epoch']:.2f}" for i in impls)
                 + " | |")
    return "\n".join(lines)


def summary(report: dict) -> str:
    """What `fmnist compare` prints at the end: the table, and with several seeds the verdicts."""
    return "\n".join([markdown_table(report)] + [""] * ("seed_verdict" in report) + seeds_mod.verdict_lines(report))


def write_markdown(report: dict, path: Path) -> Path:
    c = report["config"]
    text = [f"# {c['model']}: {', '.join(i for i in IMPLEMENTATIONS if i in report)}", "",
            f"{c['epochs']} epochs, batch {c['batch_size']}, {c['optimizer']} lr={c['lr']}"
            + (f" ({c['adam_convention']} epsilon convention, eps={c['adam_eps']})" if c["optimizer"] == "adam" else "")
            + f", init {c['init']} seed {c['seed']}, same starting weights and batch order for all.", "",
            markdown_table(report)]
    if report["differences"]:  # none when a single implementation was run
        keys = list(next(iter(report["differences"].values())))
        text += ["", "Largest pairwise differences over all epochs:", "",
                 "| pair | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
        for pair, diff in report["differences"].items():
            text.append(f"| {pair} | " + " | ".join(f"{v:.1e}" for v in diff.values()) + " |")
    if "seed_spread" in report:
        seeds = report["seeds"]
        more = f"seed{'s' * (len(seeds) > 2)} {seeds_mod.seed_names(seeds[1:])}"
        text += ["", f"## Seeds {seeds_mod.seed_names(seeds)}", "",
                 f"The tables above are seed {seeds[0]}. Every implementation was also trained from "
                 f"{more} (other starting weights and batch order, the same data). "
                 "Seed-to-seed spread, max - min over the seeds:", "",
                 seeds_mod.spread_table(report), ""]
        text += [f"- {line}" if " vs " in line else line for line in seeds_mod.verdict_lines(report)]
    path.write_text("\n".join(text) + "\n")
    return path


def compare(config: TrainConfig, splits: Splits, out_dir: str | Path, impls=IMPLEMENTATIONS,
            stream=None, callbacks_for=None, seeds: int = 1) -> dict:
    """Train `impls` side by side and write report.json, report.md and curves.png to `out_dir`;
    with `seeds` > 1, from each of `seeds` seeds (config.seed, config.seed + 1, ...)."""
    configs = seeds_mod.seed_configs(config, seeds)  # a bad count or seed fails before any training
    runs = []
    for i, c in enumerate(configs):
        heading = f", seed {c.seed} ({i + 1} of {len(configs)})" if len(configs) > 1 else ""
        runs.append(run_all(c, splits, impls, callbacks_for, stream, heading))
    report = build_report(config, runs[0], runs[1:])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jsonio.write_json(out / "report.json", report)
    write_markdown(report, out / "report.md")
    from fmnist.app.plots import plot_comparison
    plot_comparison(report, out / "curves.png")
    return report
