"""Training curves as pictures: one run (`plot_history`) or several overlaid (`plot_comparison`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fmnist.app.seeds import seed_range
from fmnist.config import IMPLEMENTATIONS

COLORS = {"handrolled": "tab:blue", "flax": "tab:orange", "nnx": "tab:red", "keras": "tab:green",
          "keras-jax": "tab:purple"}


def save_figure(fig, path: str | Path, **savefig_kwargs) -> Path:
    """Save `fig` as PNG at `path` atomically (a temporary file, then a rename) and close it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100, **savefig_kwargs)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _curves(ax, history: dict, key: str, label: str, color=None, **style):
    epochs = [row["epoch"] for row in history["epochs"]]
    ax.plot(epochs, [row[key] for row in history["epochs"]], marker="o", label=label, color=color, **style)


def plot_history(history: dict, path: str | Path) -> Path:
    """Loss and accuracy per epoch, train (solid) and validation (dashed), with the test result."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        _curves(ax, history, metric, f"train {metric}", "tab:blue")
        if history["epochs"] and f"val_{metric}" in history["epochs"][0]:
            _curves(ax, history, f"val_{metric}", f"validation {metric}", "tab:orange", linestyle="--")
        ax.axhline(history[f"test_{metric}"], color="gray", linewidth=0.8,
                   label=f"test {metric} {history[f'test_{metric}']:.4f}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    config = history.get("config", {})
    fig.suptitle(f"{history.get('impl', '')} {config.get('model', '')}: {config.get('optimizer', '')} "
                 f"lr={config.get('lr', '')}, batch {config.get('batch_size', '')}")
    fig.tight_layout()
    return save_figure(fig, path)

STYLES = {"handrolled": dict(linestyle="-", linewidth=3.5, alpha=0.45),
          "flax": dict(linestyle="-", linewidth=1.8, marker="o", markersize=4),
          "nnx": dict(linestyle="--", linewidth=1.2, marker="s", markersize=3, fillstyle="none"),
          "keras": dict(linestyle=":", linewidth=2.0, marker="x", markersize=7),
          "keras-jax": dict(linestyle="-.", linewidth=1.4, marker="^", markersize=5, fillstyle="none")}


def differences_from(report: dict, base: str, metric: str) -> dict[str, np.ndarray]:
    """|impl - base| per epoch of one metric, for every other implementation in the report."""
    out = {}
    xb = np.array([r[metric] for r in report[base]["epochs"]])
    for impl in IMPLEMENTATIONS:
        if impl in report and impl != base:
            xa = np.array([r[metric] for r in report[impl]["epochs"]])
            n = min(len(xa), len(xb))
            out[impl] = np.abs(xa[:n] - xb[:n])
    return out


def _seed_bands(ax, runs: list[dict], impl: str, metric: str, seeds: list[int]) -> None:
    """The min..max band over the seeds of `metric` (train) and val_`metric` (hatched), behind."""
    for key, style in ((metric, dict(alpha=0.2)), (f"val_{metric}", dict(alpha=0.12, hatch="///"))):
        band = seed_range(runs, key)
        if band is not None:
            label = f"{impl} {'validation' if key.startswith('val_') else 'train'}: {len(seeds)} seeds min..max"
            ax.fill_between(range(1, len(band[0]) + 1), *band, color=COLORS[impl], linewidth=0, zorder=0,
                            label=label, **style)


def plot_comparison(report: dict, path: str | Path) -> Path:
    """Three panels: loss and accuracy of every implementation overlaid (train solid markers,
    validation in a lighter shade), and each implementation's |difference| from the first one
    (hand-rolled when it ran) per epoch metric, on a log scale.

    Drawn so that curves lying exactly on each other stay distinguishable: a wide translucent band
    (hand-rolled), a thin line with dots (Flax), dashes with open squares (NNX), a dotted line with
    crosses (Keras), dash-dots with open triangles (Keras on JAX).

    A report of several seeds (`fmnist compare --seeds K`) adds the seed-to-seed band behind the
    curves, min..max over the seeds per epoch, of the reference implementation only (the bands of
    implementations that agree this closely lie on each other, and five translucent bands over each
    other read as one smudge), and its spread (max - min) in the difference panel, gray.
    """
    impls = [i for i in IMPLEMENTATIONS if i in report]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    base = impls[0]
    seed_runs = report.get("seed_runs", {}).get(base)
    for ax, metric in zip(axes[:2], ("loss", "accuracy")):
        if seed_runs:
            _seed_bands(ax, seed_runs, base, metric, report["seeds"])
        for impl in impls:
            rows = report[impl]["epochs"]
            epochs = [r["epoch"] for r in rows]
            ax.plot(epochs, [r[metric] for r in rows], color=COLORS[impl], label=f"{impl} train",
                    **STYLES[impl])
            if rows and f"val_{metric}" in rows[0]:
                ax.plot(epochs, [r[f"val_{metric}"] for r in rows], color=COLORS[impl],
                        label=f"{impl} validation", **{**STYLES[impl], "alpha": 0.35})
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[2]
    floor = 1e-12  # exact agreement (0) has no logarithm: it is drawn on this line, labelled "identical"
    for metric, style in (("loss", "-"), ("val_loss", "--"), ("val_accuracy", ":")):
        if metric not in report[base]["epochs"][0]:
            continue
        for impl, diff in differences_from(report, base, metric).items():
            ax.semilogy(range(1, len(diff) + 1), np.maximum(diff, floor), linestyle=style, marker="o",
                        markersize=3, color=COLORS[impl], label=f"{impl}: {metric}")
        if seed_runs:
            spread = np.asarray(report["seed_spread"][base][metric])
            ax.semilogy(range(1, len(spread) + 1), np.maximum(spread, floor), linestyle=style, linewidth=3,
                        color="gray", alpha=0.6, label=f"seed spread of {base}: {metric}")
    ax.axhline(floor, color="gray", linewidth=0.6)
    ax.text(1, floor * 2, "identical", fontsize=8, color="gray")
    ax.set_title(f"|difference| from {base}")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(floor / 3, 1.0)
    ax.grid(alpha=0.3, which="major")
    if len(impls) > 1:
        # with the seed spread lines the legend is longer: two columns in the empty lower right
        ax.legend(**(dict(fontsize=6, ncol=2, loc="lower right") if seed_runs else dict(fontsize=7, ncol=1)))
    else:
        ax.text(0.5, 0.5, "one implementation:\nnothing to compare", transform=ax.transAxes, ha="center")
    c = report["config"]
    seeds = (f"; curves seed {report['seeds'][0]}, band min..max over seeds "
             f"{report['seeds'][0]}..{report['seeds'][-1]} of {base}" if seed_runs else "")
    fig.suptitle(f"{c['model']}, {c['optimizer']} lr={c['lr']}, batch {c['batch_size']}: "
                 "same starting weights, same batch order" + seeds)
    fig.tight_layout()
    return save_figure(fig, path)
