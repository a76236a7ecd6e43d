"""`fmnist train` on more than one device or process: the flags, and who writes what.

    fmnist train --devices 8 ...                      one process, 8 devices (data parallel)
    fmnist train --devices 2 --coordinator HOST:PORT --num-processes 2 --process-id I ...
                                                      process I of 2, each with its devices

The mechanism is `fmnist.fastpath.sharding` (a mesh over the batch axis, the compiler's all-reduce);
this module only turns flags into it. Every process runs the same command but for --process-id and
computes the same thing: the same data, the same batch order, the same compiled steps, each step
spanning all processes' devices. Process 0 alone writes the run directory (run.json, history.json,
the checkpoints, weights.npz, curves.png) and prints progress; the others train in step, quietly.
"""

from __future__ import annotations

import argparse

PROCESS_FLAGS = {"coordinator", "num_processes", "process_id"}  # where the run happens, not what it computes


def add_devices_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=int, default=1, metavar="N",
                   help="JAX implementations: data parallel over N devices (each batch's rows split over "
                        "them; the batch size must be a multiple of N). On CPU, N devices need "
                        "XLA_FLAGS=--xla_force_host_platform_device_count=N before Python starts (docs/usage.md)")


def add_process_flags(train: argparse.ArgumentParser) -> None:
    group = train.add_argument_group("more than one process (what a cluster launcher sets: one process per host)")
    group.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                       help="join a run of --num-processes processes (jax.distributed.initialize): the same "
                            "address, process 0's, for all; --devices then counts every process's devices")
    group.add_argument("--num-processes", type=int, default=1, metavar="P", help="processes in the run")
    group.add_argument("--process-id", type=int, default=0, metavar="I",
                       help="this process's index in [0, P); process 0 alone writes the run directory")


def join(args: argparse.Namespace) -> int:
    """This process's index in the run the flags describe (0 alone), after `jax.distributed.initialize`
    when they ask for more than one process: call it before anything else touches JAX."""
    if not (args.coordinator or args.num_processes != 1 or args.process_id):
        return 0
    if not args.coordinator:
        raise ValueError("--num-processes and --process-id need --coordinator HOST:PORT (process 0's address)")
    from fmnist.fastpath.sharding import initialize

    initialize(args.coordinator, args.num_processes, args.process_id)
    return args.process_id


def train_in_step(args: argparse.Namespace, impl: str, config) -> int:
    """Process I > 0 of a multi-process run: the same training as process 0, writing nothing. With
    --resume DIR it restores DIR's checkpoint too (read only), so DIR must be visible to every
    process: a shared filesystem, as Orbax assumes for multi-host checkpoints."""
    from fmnist.app import runner
    from fmnist.data import load_splits

    runner.preflight([impl], config)
    splits = load_splits(config.val_size, config.split_seed, config.train_limit, path=args.data_dir)
    checkpoint_dir = args.resume / "checkpoint" if args.resume is not None else None
    runner.run(impl, config, splits, callbacks=[], checkpoint_dir=checkpoint_dir)
    return 0
