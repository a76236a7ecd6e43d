"""A run directory: what `fmnist train --out DIR` writes, kept valid at every instant.

    DIR/run.json        impl and config, written when the run starts (what --resume reads)
    DIR/history.json    the epochs finished so far (strict JSON), then the test results at the end
    DIR/checkpoint/     the whole training state after the last finished epoch (per implementation:
                        Orbax for the JAX ones, Keras's model and optimizer variables for Keras)
    DIR/weights.npz     the final parameters, canonical format (the portable result)
    DIR/curves.png      loss and accuracy per epoch
    DIR/.lock           held while a run uses DIR (a second run into DIR is refused)

Every file is replaced atomically (a temporary file, then a rename), so a run killed at any
instant, SIGKILL included, leaves the previous version of each file or the new one.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from fmnist import jsonio
from fmnist.callbacks import Callback
from fmnist.config import TrainConfig
from fmnist.history import RunResult, versions
from fmnist.weights import save_weights

RUN_FILES = ("run.json", "history.json", "checkpoint", "weights.npz")


class RunDirError(ValueError):
    """A run directory that cannot be used as asked (the CLI prints it as one line, exit 2)."""


def has_run(path: Path) -> bool:
    """Whether `path` holds (part of) an earlier run."""
    return any((Path(path) / name).exists() for name in RUN_FILES)


class RunLock:
    """An exclusive, non-blocking lock on DIR/.lock for as long as the run lasts (released on exit,
    also when the process is killed: the kernel drops flock locks with the file descriptor)."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / ".lock"
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            raise RunDirError(f"{self.path.parent} is in use by a run in progress (pid {holder}); "
                              "wait for it, or choose another --out") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def clear_run(directory: Path) -> None:
    """Remove an earlier run's files from `directory` (for --overwrite)."""
    import shutil

    for name in (*RUN_FILES, "curves.png"):
        path = Path(directory) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def write_run_meta(directory: Path, impl: str, config: TrainConfig) -> None:
    jsonio.write_json(Path(directory) / "run.json", {"impl": impl, "config": config.to_dict()})


def read_run_meta(directory: Path) -> tuple[str, TrainConfig]:
    """(impl, config) of the run in `directory`, or RunDirError saying what is wrong."""
    path = Path(directory) / "run.json"
    if not path.exists():
        raise RunDirError(f"{directory} holds no run to resume (no run.json); start one with fmnist train --out {directory}")
    try:
        meta = json.loads(path.read_text())
        return meta["impl"], TrainConfig(**meta["config"])
    except (ValueError, KeyError, TypeError) as e:
        raise RunDirError(f"{path} is not a run description fmnist can read ({e})") from None


def finished_epochs(directory: Path) -> int:
    """How many epochs DIR/history.json lists (0 if it is missing or unreadable)."""
    try:
        epochs = json.loads((Path(directory) / "history.json").read_text())["epochs"]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return 0
    return len(epochs) if isinstance(epochs, list) else 0


class HistoryWriter(Callback):
    """Rewrites DIR/history.json after every epoch: the epochs finished so far, strict JSON.

    A resumed run's earlier rows arrive through `replay` (from the checkpoint, which holds them
    together with the state), so the file always lists every finished epoch.
    """

    def __init__(self, directory: Path, impl: str, config: TrainConfig):
        self.path = Path(directory) / "history.json"
        self.head = {"impl": impl, "config": config.to_dict()}
        self.rows = []
        self.versions = versions(impl)

    def replay(self, rows) -> None:
        self.rows = [dict(row) for row in rows]

    def write(self, status: str, **extra) -> None:
        jsonio.write_json(self.path, {**self.head, "status": status, "epochs": self.rows,
                                      **extra, "versions": self.versions})

    def on_epoch_end(self, epoch, logs):
        self.rows = [row for row in self.rows if row["epoch"] < epoch + 1] + [dict(logs)]
        self.write("running")


def save_run(result: RunResult, out_dir: str | Path, plot: bool = True) -> dict[str, Path]:
    """Write history.json, weights.npz and (if `plot`) curves.png into `out_dir`; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"history": out / "history.json", "weights": out / "weights.npz"}
    jsonio.write_json(paths["history"], {**result.to_json(), "status": "finished"})
    save_weights(paths["weights"], result.weights)
    if plot:
        from fmnist.app.plots import plot_history
        paths["curves"] = plot_history(result.to_json(), out / "curves.png")
    return paths
