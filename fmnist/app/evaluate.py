"""`fmnist evaluate`: a trained run's weights on the full test set, in any implementation.

`evaluate_run(run_dir, impl, out_dir)` loads `RUN_DIR/weights.npz` (canonical format, so weights
trained by one implementation load into every other), computes the logits of the 10,000 test images
with `impl` (`predict_logits`), and writes into `out_dir`:

    evaluation.json        impl, model, weights (path), test_loss, test_accuracy, confusion_matrix
                           (10x10 ints, rows = true class, columns = predicted), disagreements
    confusion_matrix.png   counts per cell, colour normalised per true class
    predictions.png        test images with predicted class, true class and softmax probability

Cross-implementation agreement. The same weights must give the same predictions everywhere, so the
logits are also computed by the other implementations asked for (by default the other in-process
JAX ones, which cost a compile and a forward pass each; `compare_impls=` adds Keras on TensorFlow,
which imports TensorFlow, and keras-jax, which starts a child process) and, for each pair,
`disagreements` counts the test images whose predicted classes differ and `max_abs_logit_difference`
is the largest |logit difference|. A prediction can only flip where the top two logits of an image
are closer than the implementations' rounding differences; `near_ties` counts those images.

Measured with every implementation (`--compare-impls`), all 10,000 test images, batches of 1000,
the same figures with jax 0.12.0 (Python 3.13) and jax 0.10.2 (Python 3.11), tensorflow-cpu 2.21,
on the project's 2-core CPU:

    run                          differing predictions   largest |logit difference|, by pair
    MLP, 5 epochs (flax)         0 in all 10 pairs       0 among handrolled, flax, nnx, keras-jax
                                                         (bit-identical); 1.1e-5 from keras
    CNN, 3 epochs (handrolled)   0 in all 10 pairs       0 flax-nnx (shared layers); 3.8e-6 handrolled
                                                         vs flax/nnx (convolutions written differently);
                                                         9.5e-6 at most (flax-keras; 7.6e-6 for
                                                         the docs/evaluate.md run, trained on 0.10.2)

Logits reach 30-40 in magnitude, so these are float32 rounding. The closest top-two logits of any
test image were 6.1e-4 (MLP) and 1.2e-3 / 1.3e-3 (CNNs) apart, 25-90 times what rounding can move
them, so no prediction could flip (`near_ties` 0).

Loss and accuracy are computed here, from the logits, in float64 NumPy (the mean of
logsumexp(logits) - logits[label]), the same way for every implementation; they match the
`test_loss`/`test_accuracy` a run's history.json recorded to float32 rounding (the implementations'
own `evaluate` reduces in float32 on the device).
"""

from __future__ import annotations

import itertools
import json
import re
import zipfile
from pathlib import Path

import numpy as np

from fmnist.config import IMPLEMENTATIONS
from fmnist.data import CLASS_NAMES, FILES, find_data_dir, preprocess, read_idx
from fmnist.jsonio import atomic_write_text, dumps
from fmnist.weights import KERNEL_SHAPES, Weights, check_weights, load_weights, model_of, to_numpy
from fmnist.app.predict import BATCH_SIZE, check_impl, predict_logits  # noqa: F401  (part of this module's API)

NUM_CLASSES = len(CLASS_NAMES)
JAX_IMPLS = ("handrolled", "flax", "nnx")   # in-process and cheap: compared by default
DEFAULT_IMPL = "handrolled"                 # when history.json does not say who trained the run
OUTPUT_FILES = {"evaluation": "evaluation.json", "confusion_matrix": "confusion_matrix.png",
                "predictions": "predictions.png"}


# --------------------------------------------------------------------------- reading a run

def read_run_weights(run_dir: str | Path) -> tuple[Weights, str]:
    """(canonical weights as float32 NumPy, model name) of `run_dir/weights.npz`; ValueError if unusable."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir} is not a run directory (it does not exist or is not a directory)")
    path = run_dir / "weights.npz"
    if not path.is_file():
        raise ValueError(f"{path} not found: RUN_DIR must hold the weights.npz that `fmnist train` writes")
    try:
        weights = load_weights(path)
    # np.load raises BadZipFile (not a zip), EOFError/OSError (truncated), ValueError (pickled or
    # malformed arrays, keys without "layer/"); all mean the same to the user.
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot read {path} as canonical weights ({type(e).__name__}: {e})") from None
    try:
        model = model_of(weights)
        check_weights(model, weights)
        weights = to_numpy(weights)
    except (ValueError, TypeError) as e:
        layers = {layer: {k: tuple(np.shape(v)) for k, v in p.items()} for layer, p in weights.items()}
        raise ValueError(f"{path} matches no model ({', '.join(KERNEL_SHAPES)}): {e}; it holds {layers}") from None
    return weights, model


def read_history(run_dir: str | Path) -> dict | None:
    """`run_dir/history.json` as a dict, or None when there is none; ValueError if it is unreadable."""
    path = Path(run_dir) / "history.json"
    if not path.exists():
        return None
    try:
        history = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if not isinstance(history, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return history


def default_impl(history: dict | None) -> str:
    """The implementation that trained the run (history.json's "impl"), else `DEFAULT_IMPL`."""
    impl = (history or {}).get("impl")
    return impl if impl in IMPLEMENTATIONS else DEFAULT_IMPL


def load_test_set(data_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 test images, preprocessed as for training (float32 NHWC in [0, 1]), and int32 labels.

    Reads only the two test files (verified like `fmnist.data.load_data`), not the training set.
    """
    d = find_data_dir(data_dir)
    images = read_idx(d / FILES["test_images"].name, FILES["test_images"])
    labels = read_idx(d / FILES["test_labels"].name, FILES["test_labels"])
    return preprocess(images), labels.astype(np.int32)


# --------------------------------------------------------------------------- metrics

def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax of each row, in float64 (max subtracted first, so large logits cannot overflow)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities of each row, float64."""
    return np.exp(log_softmax(logits))


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean over examples of -log softmax(logits)[label]: the training loss, on logits."""
    return float(-np.mean(log_softmax(logits)[np.arange(len(labels)), labels]))


def confusion_matrix(y_true, y_pred, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """int64 (num_classes, num_classes): entry [t, p] counts examples of true class t predicted as p."""
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {len(y_true)} vs {len(y_pred)}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name} holds labels outside [0, {num_classes})")
    flat = y_true.astype(np.int64) * num_classes + y_pred.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def compare_logits(logits: dict[str, np.ndarray]) -> dict:
    """Agreement of several implementations' logits for the same images, pair by pair.

    {"impls", "disagreements": {"a-b": images whose argmax differs}, "max_abs_logit_difference":
     {"a-b": float}, "near_ties": images whose top-two logits (in the first implementation) are at
     most twice the largest |logit difference| apart, "smallest_top2_gap": the closest such pair}.

    Only a near tie can flip: an implementation whose logits are each within d of these moves the
    gap between two classes by at most 2d.
    """
    impls = list(logits)
    # Pairs named in the canonical order ("handrolled-flax"), whichever implementation was evaluated.
    ordered = sorted(impls, key=lambda i: IMPLEMENTATIONS.index(i) if i in IMPLEMENTATIONS else len(IMPLEMENTATIONS))
    pairs = list(itertools.combinations(ordered, 2))
    predictions = {impl: np.argmax(z, axis=-1) for impl, z in logits.items()}
    disagreements = {f"{a}-{b}": int(np.sum(predictions[a] != predictions[b])) for a, b in pairs}
    largest = {f"{a}-{b}": float(np.max(np.abs(logits[a].astype(np.float64) - logits[b].astype(np.float64))))
               for a, b in pairs}
    top2 = np.sort(logits[impls[0]].astype(np.float64), axis=-1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0]
    worst = max(largest.values(), default=0.0)
    return {"impls": impls, "disagreements": disagreements, "max_abs_logit_difference": largest,
            "near_ties": int(np.sum(gap <= 2 * worst)), "smallest_top2_gap": float(gap.min())}


# --------------------------------------------------------------------------- the command

def comparison_impls(impl: str, compare_impls=None) -> list[str]:
    """Which implementations to compare with `impl` (itself first): `compare_impls` as given (each
    checked), or by default the installed in-process JAX ones; [] compares nothing."""
    from fmnist.app.runner import installed_impls

    if compare_impls is None:
        others = [i for i in JAX_IMPLS if i in installed_impls()]
    else:
        for other in compare_impls:
            check_impl(other, "--compare-impls")
        others = list(compare_impls)
    return list(dict.fromkeys([impl, *others]))  # each once, the evaluated one first


def evaluate_run(run_dir: str | Path, impl: str | None = None, out_dir: str | Path | None = None,
                 compare_impls=None, data_dir=None, test_set=None, plots: bool = True) -> dict:
    """Evaluate `run_dir/weights.npz` with `impl` on the test set; write evaluation.json and the
    two pictures into `out_dir` (default `run_dir`); return what evaluation.json holds.

    `impl` None: the implementation that trained the run. `compare_impls`: see `comparison_impls`.
    `test_set`: (images, labels) instead of reading the test files (preprocessed as `load_test_set`).
    """
    run_dir = Path(run_dir)
    weights, model = read_run_weights(run_dir)
    history = read_history(run_dir)
    config = (history or {}).get("config")
    trained_model = config.get("model") if isinstance(config, dict) else None
    if trained_model is not None and trained_model != model:
        raise ValueError(f"{run_dir / 'weights.npz'} holds {model} weights, but {run_dir / 'history.json'} "
                         f"says the run trained a {trained_model}")
    impl = impl or default_impl(history)
    check_impl(impl)
    impls = comparison_impls(impl, compare_impls)
    out = Path(out_dir) if out_dir is not None else run_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot use {out} as the output directory: {e.strerror}") from None
    x, y = test_set if test_set is not None else load_test_set(data_dir)

    logits = {i: predict_logits(i, model, weights, x) for i in impls}
    z = logits[impl]
    predicted = np.argmax(z, axis=-1)
    report = {
        "impl": impl, "model": model, "weights": str(run_dir / "weights.npz"),
        "trained_by": (history or {}).get("impl"), "test_examples": int(len(y)),
        "test_loss": cross_entropy(z, y), "test_accuracy": float(np.mean(predicted == y)),
        "confusion_matrix": confusion_matrix(y, predicted).tolist(),
        "classes": list(CLASS_NAMES),
    }
    if history is not None:  # what training measured, to compare with
        report["history_test_loss"] = history.get("test_loss")
        report["history_test_accuracy"] = history.get("test_accuracy")
    agreement = compare_logits(logits)
    report["compared_impls"] = agreement["impls"]
    report["disagreements"] = agreement["disagreements"]
    report["max_abs_logit_difference"] = agreement["max_abs_logit_difference"]
    report["near_ties"] = agreement["near_ties"]
    report["smallest_top2_gap"] = agreement["smallest_top2_gap"]
    write_evaluation_json(out / OUTPUT_FILES["evaluation"], report)
    if plots:
        from fmnist.app import evaluation_plots

        probabilities = softmax(z)
        title = f"{impl} {model} (weights: {run_dir})"
        evaluation_plots.plot_confusion_matrix(
            np.array(report["confusion_matrix"]), out / OUTPUT_FILES["confusion_matrix"],
            title=f"{title}: test accuracy {report['test_accuracy']:.4f}")
        evaluation_plots.plot_predictions(x, y, probabilities, out / OUTPUT_FILES["predictions"], title=title)
    return report


def write_evaluation_json(path: str | Path, report: dict) -> Path:
    """`report` as strict JSON (`fmnist.jsonio`), written atomically, each row of numbers on one line."""
    # Only whitespace inside arrays of plain numbers changes, so the text stays the same JSON
    # (json.loads gives back the same value); the confusion matrix then reads as a 10x10 table.
    text = re.sub(r"\[([-+0-9.eE,\s]+)\]",
                  lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", dumps(report))
    return atomic_write_text(path, text + "\n")


def summary(report: dict) -> str:
    """The lines `fmnist evaluate` prints: loss and accuracy, then the agreement of the implementations."""
    n = report["test_examples"]
    lines = [f"{report['impl']} {report['model']} on {n} test images: test_loss: {report['test_loss']:.4f} "
             f"- test_accuracy: {report['test_accuracy']:.4f}"]
    if report["disagreements"]:
        pairs = ", ".join(f"{pair} {count}" for pair, count in report["disagreements"].items())
        worst = max(report["max_abs_logit_difference"].values())
        lines.append(f"Predictions that differ (of {n}): {pairs}; largest |logit difference| {worst:.2g}")
    else:
        lines.append("No other implementation compared (see --compare-impls)")
    return "\n".join(lines)
