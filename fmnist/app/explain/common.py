"""What the topics share: a real Fashion-MNIST batch, the canonical CNN, figures, Keras if installed."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

MACHINE = "(machine-dependent: float32 rounding of this CPU's kernels)"


@functools.lru_cache(maxsize=1)
def _train_set():
    from fmnist.data import load_data

    (x, y), _ = load_data()
    return x, y


def real_batch(n: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` Fashion-MNIST training images, float32 NHWC in [0, 1] (`fmnist.data.preprocess`),
    and their int32 labels. The files are read once per process."""
    from fmnist.data import preprocess

    x, y = _train_set()
    return preprocess(x[:n]), y[:n].astype(np.int32)


def raw_train_images() -> np.ndarray:
    """The 60,000 training images as uint8 (N, 28, 28)."""
    return _train_set()[0]


def canonical_weights(model: str = "cnn", init: str = "he_normal", seed: int = 0):
    """The starting weights every implementation loads (`fmnist.weights.init_weights`)."""
    from fmnist.weights import init_weights

    return init_weights(model, init, seed)


def figure(ncols: int = 2, width: float = 12.0, height: float = 4.5):
    """A figure with `ncols` panels side by side, in the style of `fmnist.app.plots`."""
    from fmnist.app import plots  # noqa: F401  (selects the Agg backend)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width, height))
    return fig, np.atleast_1d(axes)


def save(fig, out: Path, name: str, title: str, grid: bool = True) -> str:
    """Give `fig` its title (and light grids), lay it out and write `<out>/<name>.png` atomically;
    return the path."""
    from fmnist.app.plots import save_figure

    for ax in fig.axes if grid else ():
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return str(save_figure(fig, Path(out) / f"{name}.png"))


def keras_installed() -> bool:
    return importlib.util.find_spec("keras") is not None


def import_keras():
    """Keras (TensorFlow backend unless KERAS_BACKEND says otherwise), or None if not installed."""
    if not keras_installed():
        return None
    from keras_baseline import import_keras

    return import_keras()


def fmt(x, digits: int = 4) -> str:
    """`x` in `digits` significant digits (scientific when small or large); None as "never"."""
    if x is None:
        return "never"
    return f"{float(x):.{digits}g}"


FLOOR = 1e-12  # an exact 0 has no logarithm: drawn on this line, labelled "0 (identical)"


def log_bars(ax, names, values, color="tab:blue") -> None:
    """Bars of |differences| on a log axis, exact zeros drawn at FLOOR and labelled."""
    ax.bar(list(names), [max(v, FLOOR) for v in values], color=color)
    ax.set_yscale("log")
    ax.axhline(FLOOR, color="gray", linewidth=0.6)
    ax.text(-0.4, FLOOR * 2, "0 (identical)", fontsize=8, color="gray")
    ax.tick_params(axis="x", rotation=45, labelsize=8)
