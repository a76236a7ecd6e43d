"""The `fmnist` command: `train`, `compare`, `bench`, `evaluate`, `explain` and `data`.

The flags are defined in `fmnist.app.flags`; this module runs what they ask for, and everything it
drives is a library function that tests import directly. Bad input ends with a one-line reason and
exit status 2, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fmnist.app import distributed, explain
from fmnist.app.flags import BENCH_IMPLS, build_parser, config_from, output_dir
from fmnist.config import TrainConfig
from fmnist.data import DataError


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
