"""Pictures of an evaluation: the confusion matrix, and a grid of test images with their predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

from fmnist.data import CLASS_NAMES  # noqa: E402

MISTAKE = "#c62828"   # red: title and frame of a wrong prediction
CORRECT = "#1b5e20"   # dark green: title of a right one


def plot_confusion_matrix(matrix: np.ndarray, path: str | Path, title: str = "",
                          class_names=CLASS_NAMES) -> Path:
    """Counts in every cell; the colour is the count divided by its row's total (per true class),
    so a class with few examples is as readable as one with many."""
    matrix = np.asarray(matrix)
    totals = matrix.sum(axis=1, keepdims=True)
    fraction = matrix / np.maximum(totals, 1)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(9, 7.6))
    image = ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0)
    for t in range(k):
        for p in range(k):
            if matrix[t, p] == 0:
                continue  # empty cells stay blank: the eye finds the confusions
            ax.text(p, t, f"{matrix[t, p]}", ha="center", va="center", fontsize=9,
                    color="white" if fraction[t, p] > 0.5 else "black",
                    fontweight="bold" if t == p else "normal")
    ax.set_xticks(range(k), class_names, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_xticks(np.arange(k + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(k + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1.0)
    ax.tick_params(which="minor", length=0)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("fraction of the true class (row)")
    correct = int(np.trace(matrix))
    ax.set_title(f"{title}\n{correct} of {int(matrix.sum())} test images right (the diagonal); colour: "
                 "share of the row's true class", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def percent(p: float) -> str:
    """A probability as a percentage with as many decimals as it takes not to print 100% for p < 1."""
    for decimals, below in ((0, 0.995), (1, 0.9995), (2, 0.99995)):
        if p < below:
            return f"{p:.{decimals}%}"
    return "> 99.99%"


def choose_examples(labels: np.ndarray, probabilities: np.ndarray, n_mistakes: int = 16,
                    n_sample: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the `n_mistakes` most confident mistakes, most confident first; indices of a fixed
    sample of `n_sample` other test images, in test-set order).

    The sample is the start of one permutation of the test set (NumPy seed `seed`), skipping the
    mistakes already shown, so two models are mostly shown the same images. Fewer mistakes than
    asked leaves the rest of the grid to the sample.
    """
    predicted = probabilities.argmax(axis=-1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]]
    mistakes = wrong[np.argsort(-confidence, kind="stable")[:n_mistakes]]
    order = np.random.default_rng(seed).permutation(len(labels))
    order = order[~np.isin(order, mistakes)]
    sample = np.sort(order[:n_sample + n_mistakes - len(mistakes)])
    return mistakes, sample


def plot_predictions(images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
                     path: str | Path, title: str = "", n_mistakes: int = 16, n_sample: int = 16,
                     columns: int = 8, class_names=CLASS_NAMES) -> Path:
    """Test images, each titled with its predicted class and softmax probability and its true class;
    mistakes in red with a red frame. The top rows are the most confident mistakes, the bottom rows
    a fixed random sample (see `choose_examples`)."""
    mistakes, sample = choose_examples(labels, probabilities, n_mistakes, n_sample)
    groups = [("the most confident mistakes", mistakes), ("a fixed random sample (seed 0)", sample)]
    groups = [(name, idx) for name, idx in groups if len(idx)]
    rows = [int(np.ceil(len(idx) / columns)) for _, idx in groups]
    fig = plt.figure(figsize=(columns * 1.55, sum(rows) * 1.8 + 0.45 * len(groups) + 0.6))
    subfigs = np.atleast_1d(fig.subfigures(len(groups), 1, height_ratios=rows))
    predicted = probabilities.argmax(axis=-1)
    for subfig, (name, idx), n_rows in zip(subfigs, groups, rows):
        wrong_here = int(np.sum(predicted[idx] != labels[idx]))
        subfig.suptitle(f"{name}: {wrong_here} of {len(idx)} wrong", fontsize=11, x=0.01, ha="left")
        axes = np.atleast_2d(subfig.subplots(n_rows, columns))
        for ax in axes.ravel():
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_visible(False)
        for ax, i in zip(axes.ravel(), idx):
            ax.set_visible(True)
            ax.imshow(np.asarray(images[i]).squeeze(), cmap="gray_r", vmin=0.0, vmax=1.0)
            p, t = int(predicted[i]), int(labels[i])
            colour = CORRECT if p == t else MISTAKE
            ax.set_title(f"{class_names[p]} {percent(probabilities[i, p])}\ntrue: {class_names[t]}",
                         fontsize=8, color=colour, fontweight="bold" if p != t else "normal")
            for spine in ax.spines.values():
                spine.set_edgecolor(colour if p != t else "#bbbbbb")
                spine.set_linewidth(2.5 if p != t else 0.8)
            ax.set_xlabel(f"#{i}", fontsize=7, color="#666666", labelpad=1)
        subfig.subplots_adjust(left=0.01, right=0.99, bottom=0.04, top=0.80 if n_rows == 1 else 0.86,
                               wspace=0.08, hspace=0.5)
    if title:
        fig.suptitle(f"{title}: predicted class and probability (softmax), true class", fontsize=12, y=1.03)
    path = Path(path)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
