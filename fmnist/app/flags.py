"""The `fmnist` command line's flags: the parser of every subcommand, the value checks, and the
`TrainConfig` the training flags describe. `fmnist.app.cli` runs what they ask for.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from fmnist.app import distributed, explain
from fmnist.config import ADAM_CONVENTIONS, IMPLEMENTATIONS, OPTIMIZERS, TrainConfig
from fmnist.initializers import INITIALIZERS
from fmnist.weights import MODEL_NAMES

DEFAULTS = TrainConfig()
BENCH_IMPLS = ("handrolled", "flax", "nnx", "keras")  # fmnist.app.bench.IMPLS, without importing JAX here


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def output_dir(path: Path) -> Path:
    """`path`, created now, so an unusable --out fails before training rather than after."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot use {path} as the output directory: {e.strerror}") from None
    return path


def add_train_flags(p: argparse.ArgumentParser, epochs: int = DEFAULTS.epochs) -> None:
    """The flags of a training run; `train`, `compare` and `bench` share them."""
    p.add_argument("--model", choices=MODEL_NAMES, default=DEFAULTS.model,
                   help="mlp: the post's 784-128-10 network; cnn: two 3x3 conv+pool blocks, 128, 10")
    p.add_argument("--epochs", type=positive_int, default=epochs, help="passes over the training set")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size,
                   help="examples per training step")
    p.add_argument("--lr", type=positive_float, default=DEFAULTS.lr, help="learning rate")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=DEFAULTS.optimizer, help="update rule")
    p.add_argument("--momentum", type=float, default=DEFAULTS.momentum, help="SGD momentum, in [0, 1)")
    p.add_argument("--adam-convention", choices=ADAM_CONVENTIONS, default=DEFAULTS.adam_convention,
                   help="where Adam's epsilon goes: 'keras' (epsilon-hat, Keras's only form) or "
                        "'paper' (Kingma & Ba Algorithm 1, optax.adam)")
    p.add_argument("--adam-eps", type=float, default=DEFAULTS.adam_eps, help="Adam's epsilon")
    p.add_argument("--init", choices=sorted(INITIALIZERS), default=DEFAULTS.init,
                   help="initialiser of the canonical starting weights every implementation loads")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed,
                   help="seeds the starting weights and the batch order")
    p.add_argument("--val-size", type=int, default=DEFAULTS.val_size,
                   help="training examples held out for validation (0 for none)")
    p.add_argument("--train-limit", type=positive_int, default=None,
                   help="train on only the first N remaining training examples")
    p.add_argument("--steps-per-call", type=positive_int, default=DEFAULTS.steps_per_call,
                   help="JAX implementations: training steps compiled into one call")
    p.add_argument("--readable", dest="fast", action="store_false",
                   help="JAX implementations: train on the readable path (plain layers, one jitted step "
                        "per batch) instead of the fast path; the same numbers to float32 rounding, slower")
    distributed.add_devices_flag(p)
    p.add_argument("--early-stopping", type=positive_int, default=None, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without a lower validation loss")
    p.add_argument("--no-terminate-on-nan", dest="terminate_on_nan", action="store_false",
                   help="train on after a NaN or infinite training loss (default: stop at the first, "
                        "as Keras's TerminateOnNaN)")
    p.add_argument("--data-dir", default=None,
                   help="directory holding the four IDX .gz files (default: $FASHION_MNIST_DIR, "
                        "/usr/share/datasets/fashion-mnist, then Keras's cache)")


def config_from(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        optimizer=args.optimizer, momentum=args.momentum, adam_convention=args.adam_convention,
        adam_eps=args.adam_eps, init=args.init, seed=args.seed, val_size=args.val_size,
        train_limit=args.train_limit, steps_per_call=args.steps_per_call,
        early_stopping_patience=args.early_stopping, terminate_on_nan=args.terminate_on_nan,
        fast=args.fast, devices=args.devices)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fmnist", description="Fashion-MNIST trained several ways: hand-rolled JAX, Flax linen and NNX with Optax, "
                    "Keras on TensorFlow and on JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one implementation and evaluate it on the test set",
                           description="Train one implementation from the canonical starting weights "
                                       "into a run directory (--out): after every epoch history.json "
                                       "and checkpoint/ (the whole training state), at the end "
                                       "weights.npz and curves.png. Ctrl-C stops after saving what is "
                                       "finished; --resume DIR continues, bit for bit.")
    train.add_argument("--impl", choices=IMPLEMENTATIONS, default="handrolled", help="which implementation")
    add_train_flags(train)
    train.add_argument("--out", type=Path, default=None, help="run directory (default runs/IMPL-MODEL)")
    train.add_argument("--resume", type=Path, default=None, metavar="DIR",
                       help="continue the run in DIR from its last finished epoch, with its saved "
                            "settings (--epochs N may raise the number of epochs)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run already in --out (without it, an existing run is never touched)")
    distributed.add_process_flags(train)

    compare = sub.add_parser("compare", help="train every implementation from the same weights and batch order",
                             description="Train every implementation from the same canonical weights "
                                         "and batch order; write report.json, report.md and curves.png.")
    add_train_flags(compare)
    compare.add_argument("--impls", nargs="+", choices=IMPLEMENTATIONS, default=None,
                         help="which implementations to compare (default: every one whose packages "
                              "are installed)")
    compare.add_argument("--out", type=Path, default=None, help="output directory (default runs/compare-MODEL)")
    compare.add_argument("--seeds", type=positive_int, default=1, metavar="K", help="train from K seeds "
                         "(--seed, --seed + 1, ...) and show the seed-to-seed spread (K times the time)")

    bench = sub.add_parser("bench", help="seconds per epoch of each implementation, side by side",
                           description="Time training steps of each implementation, interleaved and "
                                       "repeated; report medians scaled to one epoch, each model's "
                                       "bound (FLOPs at the matmul rate), and the ratios.")
    bench.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    bench.add_argument("--impls", nargs="+", choices=BENCH_IMPLS, default=None,
                       help="which implementations to time (default: every installed one of "
                            f"{', '.join(BENCH_IMPLS)}; keras-jax is not timed: its CNN step is ~20x Flax's)")
    bench.add_argument("--repeats", type=positive_int, default=5, help="interleaved rounds (median taken)")
    bench.add_argument("--mlp-steps", type=positive_int, default=None, help="MLP steps per measurement (600)")
    bench.add_argument("--cnn-steps", type=positive_int, default=None, help="CNN steps per measurement (40)")
    bench.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    bench.add_argument("--data-dir", default=None, help="directory holding the four IDX .gz files")

    evaluate = sub.add_parser(
        "evaluate", help="a run's weights on the full test set, in any implementation",
        description="Load RUN_DIR/weights.npz (canonical weights, whichever implementation trained "
                    "them) into --impl, run it on the 10,000 test images, print test loss and accuracy, "
                    "and write evaluation.json, confusion_matrix.png and predictions.png into --out. "
                    "The same weights must predict the same classes in every implementation: by default "
                    "the predictions are also computed by the other installed in-process JAX "
                    "implementations (handrolled, flax, nnx; a compile and a forward pass each), and the "
                    "number of the 10,000 predictions that differ between each pair is printed and "
                    "written to evaluation.json (\"disagreements\", with the largest |logit difference|).")
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                          help="a directory written by `fmnist train` (weights.npz; history.json optional)")
    evaluate.add_argument("--impl", choices=IMPLEMENTATIONS, default=None,
                          help="which implementation computes the predictions (default: the one that "
                               "trained the run, from RUN_DIR/history.json, else handrolled)")
    evaluate.add_argument("--out", type=Path, default=None, help="output directory (default RUN_DIR)")
    evaluate.add_argument("--compare-impls", nargs="*", choices=IMPLEMENTATIONS, default=None, metavar="IMPL",
                          help="compare the predictions with these implementations instead; with no "
                               "names, every installed one (keras imports TensorFlow, keras-jax starts "
                               f"a child process); put RUN_DIR before it. Choices: {', '.join(IMPLEMENTATIONS)}")
    evaluate.add_argument("--no-compare", action="store_true", help="compute the predictions with --impl only")
    evaluate.add_argument("--data-dir", default=None, help="directory holding the four IDX .gz files")
    explain.add_parser(sub)  # `fmnist explain TOPIC`: fmnist/app/explain/__init__.py
    data = sub.add_parser("data", help="find and verify the dataset; say how to install it if missing")
    data.add_argument("--data-dir", default=None, help="directory holding the four IDX .gz files")
    return parser
