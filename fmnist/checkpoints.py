"""A JAX training state on disk after every epoch, with Orbax, so that a run can resume bit for bit.

    ckpt = Checkpointer(run_dir / "checkpoint")
    ckpt.save(epoch, state, rows)          # after epoch `epoch` (1-based) finished
    state, epoch, rows = ckpt.restore(like=state)   # the last epoch saved, or None if there is none

`state` is any pytree of arrays: the hand-rolled `(model, AdamState)`, a Flax `TrainState`'s
(params, opt_state, step), an NNX state. Together with the state, one Orbax checkpoint holds the
epoch reached and the history rows so far (JSON), so the two can never disagree. The batch order
needs nothing more: epoch e's order is a function of (seed, e) alone (`fmnist.data.Dataloader`).

Atomic: Orbax writes each checkpoint into a temporary directory and renames it when complete, and
deletes the previous one only after that, so a run killed at any instant (SIGKILL included)
leaves the last finished epoch restorable. Saves are asynchronous: the state is copied to host
memory first (the next training call donates, i.e. overwrites, the device buffers), then Orbax
writes in a background thread while training goes on; `close()` waits for the last write.
Ctrl-C is held back while Orbax hands a save to its threads, and while it closes (`_sigint_deferred`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that exists but cannot be restored (damaged, or from another model)."""


def _process_options(ocp) -> dict:
    """Orbax options for this process. One process: keep the last checkpoint. In a multi-process
    run (`jax.distributed`) every process holds the whole (replicated) state, so process 0 alone
    saves, without waiting for the others, and the others only read (to resume: the directory must
    be visible to them, a shared filesystem); saving `np.array` copies makes that possible."""
    import jax

    if jax.process_count() == 1:
        return {"max_to_keep": 1}
    me = jax.process_index()
    alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    # Orbax will not create the directory for a subset of the processes: Checkpointer does.
    return {"multiprocessing_options": alone, "create": False,
            **({"max_to_keep": 1} if me == 0 else {"read_only": True})}


@contextlib.contextmanager
def _sigint_deferred():
    """Hold a Ctrl-C (SIGINT) back until the block is done, then act on it as it would have.

    Orbax's `save` starts its writer threads before it records them: a KeyboardInterrupt in between
    leaves threads that `close()` does not wait for, then shuts the executors they need; one dies on
    that, the others wait five minutes for its signal, and the interpreter's exit waits for them."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread receives signals (and may set their handlers)
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught and callable(previous):  # Python's default handler raises KeyboardInterrupt
        previous(signal.SIGINT, caught[0])


class Checkpointer:
    """The latest epoch's training state under `directory`, kept by `orbax.checkpoint.CheckpointManager`."""

    def __init__(self, directory: str | Path):
        import orbax.checkpoint as ocp  # here: Orbax takes a second to import, and only training needs it

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        options = _process_options(ocp)
        self.read_only = options.get("read_only", False)
        if not self.read_only:
            self.directory.mkdir(parents=True, exist_ok=True)
        self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            enable_async_checkpointing=True, **options))

    def latest_epoch(self) -> int | None:
        """The last epoch saved completely, or None."""
        return self.manager.latest_step()

    def save(self, epoch: int, state, rows: list[dict]) -> None:
        """Start saving `state` (any pytree of arrays) and the history `rows` as epoch `epoch`."""
        import jax

        from fmnist import jsonio

        if self.read_only:  # a process other than 0 of a multi-process run
            return

        host = jax.tree.map(np.array, state)  # copies: the device buffers are donated next
        ocp = self._ocp
        with _sigint_deferred():
            self.manager.wait_until_finished()  # one write at a time
            self.manager.save(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardSave(host),
                progress=ocp.args.JsonSave({"epoch": epoch, "rows": jsonio.strict(rows)})))

    def restore(self, like):
        """(state, epoch, rows) of the last epoch saved, `state` shaped like `like`; None if nothing is saved."""
        import jax

        epoch = self.latest_epoch()
        if epoch is None:
            return None
        ocp = self._ocp
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            restored = self.manager.restore(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()))
            progress = restored["progress"]
            consistent = progress["epoch"] == epoch and len(progress["rows"]) == epoch
        except Exception as e:  # Orbax and TensorStore raise many kinds; the user needs one line
            raise CheckpointError(f"the checkpoint in {self.directory} cannot be restored "
                                  f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                                  "delete it to start over, or --overwrite") from None
        if not consistent:
            raise CheckpointError(f"the checkpoint in {self.directory} is inconsistent (epoch {epoch}, "
                                  f"progress {progress!r:.100}); delete it to start over, or --overwrite")
        return restored["state"], epoch, progress["rows"]

    def close(self) -> None:
        """Wait for the last save to be on disk."""
        with _sigint_deferred():  # a second Ctrl-C here would leave Orbax's threads to block the exit
            self.manager.wait_until_finished()
            self.manager.close()
