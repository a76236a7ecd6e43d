"""The `fmnist` command: `train`, `compare`, `bench`, `evaluate`, `explain` and `data`.

Flags only live here; everything they drive is a library function that tests import directly.
Bad input ends with a one-line reason and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from fmnist.app import distributed, explain
from fmnist.config import ADAM_CONVENTIONS, IMPLEMENTATIONS, OPTIMIZERS, TrainConfig
from fmnist.data import DataError
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


# Flags that may differ from a resumed run's saved config (they do not change what is computed).
RESUMABLE = {"epochs", "data_dir", "resume", "out", "overwrite", "command"} | distributed.PROCESS_FLAGS


def explicit_flags(argv) -> set[str]:
    """The destinations of the `train` flags given in `argv` (argparse's defaults hide which were)."""
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    given = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}
    return {action.dest for action in train._actions if given & set(action.option_strings)}


def resumed_config(args, argv) -> tuple[str, TrainConfig]:
    """(impl, config) of the run in `args.resume`; a flag that contradicts it is refused."""
    from fmnist.app import rundir

    impl, saved = rundir.read_run_meta(args.resume)
    given = config_from(args).to_dict() | {"impl": args.impl}
    for name in sorted(explicit_flags(argv) - RESUMABLE):
        key = {"early_stopping": "early_stopping_patience"}.get(name, name)
        theirs = impl if key == "impl" else saved.to_dict().get(key)
        if given.get(key) != theirs:
            raise rundir.RunDirError(f"--{name.replace('_', '-')} {given.get(key)} contradicts the run in "
                                     f"{args.resume} ({key}={theirs}); drop it to resume")
    epochs = args.epochs if "epochs" in explicit_flags(argv) else saved.epochs
    finished = rundir.finished_epochs(args.resume)
    if epochs < finished:
        raise rundir.RunDirError(f"the run in {args.resume} has already trained {finished} epochs; "
                                 f"--epochs {epochs} would undo some (give at least {finished})")
    return impl, TrainConfig(**{**saved.to_dict(), "epochs": epochs})


def cmd_train(args, argv=None) -> int:
    from fmnist.app import runner, rundir
    from fmnist.callbacks import ProgressBar
    from fmnist.data import load_splits
    from fmnist.loop import NonFiniteLoss

    if args.resume is not None:
        if args.out is not None and args.out != args.resume:
            raise ValueError("--resume DIR continues the run in DIR; give no --out")
        impl, config = resumed_config(args, argv if argv is not None else sys.argv[1:])
        out = args.resume
    else:
        impl, config, out = args.impl, config_from(args), args.out or Path("runs") / f"{args.impl}-{args.model}"
    if distributed.join(args) > 0:  # process I > 0 of several: process 0 alone writes the run directory
        return distributed.train_in_step(args, impl, config)
    runner.preflight([impl], config)
    with rundir.RunLock(output_dir(out)):
        if args.resume is None and rundir.has_run(out):
            if not args.overwrite:
                raise rundir.RunDirError(f"{out} already holds a run; `fmnist train --resume {out}` "
                                         "continues it, --overwrite replaces it")
            rundir.clear_run(out)
        splits = load_splits(config.val_size, config.split_seed, config.train_limit, path=args.data_dir)
        rundir.write_run_meta(out, impl, config)
        history = rundir.HistoryWriter(out, impl, config)
        callbacks = [ProgressBar(), history]  # --early-stopping travels in the config
        verb = "Resuming" if args.resume is not None else "Training"
        print(f"{verb} {impl} {config.model} in {out} on {len(splits.x_train)} examples "
              f"({len(splits.x_val)} held out for validation), batch {config.batch_size}, "
              f"{config.optimizer} lr={config.lr}", flush=True)
        try:
            result = runner.run(impl, config, splits, callbacks=callbacks, checkpoint_dir=out / "checkpoint")
        except KeyboardInterrupt:
            history.write("interrupted")
            done = len(history.rows)
            print(f"\nfmnist train: interrupted; {done} finished epoch{'s' * (done != 1)} saved in {out}. "
                  f"Resume with: fmnist train --resume {out}", file=sys.stderr)
            return 130
        except NonFiniteLoss as e:
            history.write("non-finite loss", stopped_at={"epoch": e.epoch, "step": e.step})
            print(f"\nfmnist train: error: {e}", file=sys.stderr)
            return 3
        paths = rundir.save_run(result, out)
    print(f"Test accuracy {result.test_accuracy:.4f}, test loss {result.test_loss:.4f}, "
          f"{result.seconds_per_epoch:.1f} s per epoch (median)")
    print("Wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_compare(args) -> int:
    from fmnist.app.compare import compare, summary
    from fmnist.data import load_splits

    config = config_from(args)
    from fmnist.app.runner import installed_impls

    impls = list(dict.fromkeys(args.impls or installed_impls()))  # each once, in the order given
    out = output_dir(args.out or Path("runs") / f"compare-{config.model}")
    splits = load_splits(config.val_size, config.split_seed, config.train_limit, path=args.data_dir)
    report = compare(config, splits, out, impls, stream=sys.stdout, seeds=args.seeds)
    print()
    print(summary(report))
    print(f"\nWrote {out / 'report.json'}, {out / 'report.md'}, {out / 'curves.png'}")
    return 0


def cmd_bench(args) -> int:
    from fmnist.app import runner
    from fmnist.app.bench import main_bench
    from fmnist.data import load_splits

    impls = list(dict.fromkeys(args.impls or [i for i in runner.installed_impls() if i in BENCH_IMPLS]))
    runner.preflight(impls, TrainConfig())
    steps = {m: n for m, n in (("mlp", args.mlp_steps), ("cnn", args.cnn_steps)) if n}
    return main_bench(args.models, impls, args.repeats, steps, args.json,
                      splits=load_splits(path=args.data_dir))


def cmd_evaluate(args) -> int:
    from fmnist.app.evaluate import OUTPUT_FILES, evaluate_run, summary
    from fmnist.app.runner import installed_impls

    if args.no_compare:
        compare_impls = []
    elif args.compare_impls == []:  # the flag alone: every installed implementation
        compare_impls = installed_impls()
    else:
        compare_impls = args.compare_impls
    out = args.out or args.run_dir
    report = evaluate_run(args.run_dir, args.impl, out, compare_impls=compare_impls, data_dir=args.data_dir)
    print(summary(report))
    print("Wrote " + ", ".join(str(out / name) for name in OUTPUT_FILES.values()))
    return 0


def cmd_data(args) -> int:
    from fmnist.data import find_data_dir, load_data

    directory = find_data_dir(args.data_dir)
    (x_train, y_train), (x_test, y_test) = load_data(directory)
    print(f"Fashion-MNIST OK in {directory}: train {x_train.shape}, test {x_test.shape}, checksums verified")
    return 0


COMMANDS = {"train": cmd_train, "compare": cmd_compare, "bench": cmd_bench, "evaluate": cmd_evaluate,
            "data": cmd_data, "explain": explain.command}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return cmd_train(args, argv)
        return COMMANDS[args.command](args)
    except (DataError, ValueError) as e:
        print(f"fmnist {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fmnist: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:
        if type(e).__name__ != "KerasJaxError":  # the keras-jax child failed: its stderr says why
            raise
        print(f"fmnist {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
