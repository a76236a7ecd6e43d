"""`fmnist compare`: train every implementation from the same weights and batch order, side by side.

Writes into the output directory:
  report.json  {"config": ..., "handrolled": RUN, "flax": RUN, ..., "differences": {...}}
               RUN = {"epochs": [...train schema rows...], "test_loss", "test_accuracy",
                      "seconds_per_epoch"}; differences = per pair, the largest |a - b| of each metric
               over the epochs, of the test results, and of the final parameters.
  report.md    the per-epoch table a person reads
  curves.png   the implementations' curves overlaid, and each one's difference from the first (log scale)
"""

from __future__ import annotations

import itertools
from pathlib import Path

from fmnist import jsonio
from fmnist.app import runner
from fmnist.callbacks import ProgressBar
from fmnist.config import IMPLEMENTATIONS, TrainConfig
from fmnist.data import Splits
from fmnist.history import RunResult, versions
from fmnist.weights import init_weights, max_abs_diff

METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def run_all(config: TrainConfig, splits: Splits, impls=IMPLEMENTATIONS, callbacks_for=None,
            stream=None) -> dict[str, RunResult]:
    """Train each implementation in turn from the same canonical weights."""
    runner.preflight(impls, config)  # fail now, not after the first implementations have trained
    initial = init_weights(config.model, config.init, config.seed)
    results = {}
    for impl in impls:
        if stream is not None:
            stream.write(f"\n=== {impl} ===\n")
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


def build_report(config: TrainConfig, results: dict[str, RunResult]) -> dict:
    report = {"config": config.to_dict(),
              "versions": {impl: versions(impl) for impl in results}}
    for impl, r in results.items():
        rows = r.to_json()["epochs"]
        report[impl] = {"epochs": rows, "test_loss": float(r.test_loss),
                        "test_accuracy": float(r.test_accuracy),
                        "seconds_per_epoch": float(r.seconds_per_epoch)}
    report["differences"] = differences(results)
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
    path.write_text("\n".join(text) + "\n")
    return path


def compare(config: TrainConfig, splits: Splits, out_dir: str | Path, impls=IMPLEMENTATIONS,
            stream=None, callbacks_for=None) -> dict:
    """Train `impls` side by side and write report.json, report.md and curves.png to `out_dir`."""
    results = run_all(config, splits, impls, callbacks_for, stream)
    report = build_report(config, results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jsonio.write_json(out / "report.json", report)
    write_markdown(report, out / "report.md")
    from fmnist.app.plots import plot_comparison
    plot_comparison(report, out / "curves.png")
    return report
