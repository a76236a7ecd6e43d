"""Training curves as pictures: one run (`plot_history`) or three overlaid (`plot_comparison`)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"handrolled": "tab:blue", "flax": "tab:orange", "keras": "tab:green"}


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
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    config = history.get("config", {})
    fig.suptitle(f"{history.get('impl', '')} {config.get('model', '')}: {config.get('optimizer', '')} "
                 f"lr={config.get('lr', '')}, batch {config.get('batch_size', '')}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
