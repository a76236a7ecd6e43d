"""--impl keras-jax: the unchanged `keras_baseline` model and training code on Keras 3's JAX backend.

Why a child process. Keras picks its backend once, at the first `import keras`, and the process
that asks for keras-jax may already hold Keras on TensorFlow (`fmnist compare --impls keras
keras-jax`, the parity suite). So `train_and_evaluate` here starts

    python -m keras_baseline.jax_backend --train DIR --events-fd N     (KERAS_BACKEND=jax)

and the parent (this module, imported) imports neither Keras, JAX nor TensorFlow.

    DIR             request.json (config, progress mode), the six split arrays as .npy (np.save: the
                    training set is 172 MB, too big to pickle through a pipe), initial_weights.npz;
                    the child writes result.json (history rows, test metrics, a SHA-256 of the final
                    weights, checked by the parent) and weights.npz.
    child stdout    Keras's own progress output, copied to the parent's ProgressBar stream as it comes.
    child stderr    copied to the parent's stderr; its last lines go into the error if the child fails.
    fd N            JSON lines, one per project-callback call in the child (train_begin, epoch_begin,
                    batch_end when some callback wants it, epoch_end with the epoch's row, train_end):
                    the parent makes the same calls on its callbacks as they arrive.
    child stdin     after each epoch_end the parent answers {"stop": bool}, its callbacks' stop_training.
                    End of file means the parent is gone: the child removes DIR and exits at once.

A child that fails (exit status != 0, or killed) raises `KerasJaxError` with its last stderr lines.
Ctrl-C in the parent terminates the child (which ignores SIGINT itself, so it is stopped by the
parent, once, and prints no traceback of its own).

TensorFlow is blocked in the child (`sys.modules["tensorflow"] = None` before `import keras`):
`keras.utils.set_random_seed` imports TensorFlow whenever it is installed, to seed `tf.data` (3-5 s
and 0.6 GB per child here, for a run that uses no tf.data), and blocking it shows the run needs none.

The parity worker, `keras_baseline.jax_parity`, runs its child with this module's transport.
"""

from __future__ import annotations

import argparse
import codecs
import collections
import hashlib
import importlib.util
import json
import os
import queue
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np

from fmnist.callbacks import Callback, CallbackList, ProgressBar
from fmnist.config import TrainConfig
from fmnist.data import Splits
from fmnist.history import RunResult
from fmnist.loop import NonFiniteLoss
from fmnist.weights import Weights, check_weights, load_weights, save_weights
from keras_baseline import rules
from keras_baseline.verbosity import split_progress, wants_batches

# Found without importing them, so that `fmnist.runner.preflight` refuses keras-jax cheaply when
# the child could not run (ImportError with `name` is what the runner turns into its message).
for _name in ("keras", "jax"):
    if importlib.util.find_spec(_name) is None:
        raise ImportError(f"--impl keras-jax needs {_name} (Keras 3 on its JAX backend)", name=_name)

SPLIT_FIELDS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
STDERR_TAIL = 20        # stderr lines of a failed child quoted in the error
TERMINATE_GRACE_S = 5   # after SIGTERM, how long a child gets before SIGKILL


class KerasJaxError(RuntimeError):
    """The keras-jax child process failed; the message quotes its last stderr lines."""


# --------------------------------------------------------------------------- parent: training

def train_and_evaluate(config: TrainConfig, splits: Splits, initial_weights: Weights,
                       callbacks=(), checkpoint_dir=None) -> RunResult:
    """Train and evaluate like `keras_baseline.train.train_and_evaluate`, on Keras's JAX backend, in a child.

    A `ProgressBar` among `callbacks` gets Keras's own progress output on its stream; the other
    project callbacks get their calls here, epoch by epoch as the child runs. `checkpoint_dir`, when
    given, is handed to `keras_baseline.train.train_and_evaluate` in the child unchanged, so that
    keras-jax does what `--impl keras` does with it.
    """
    rules.check(config)  # refuse before paying for a child start
    check_weights(config.model, initial_weights)
    interactive, stream, forwarded = split_progress(callbacks)
    forwarder = _Forwarder(config, forwarded)
    with tempfile.TemporaryDirectory(prefix="fmnist-keras-jax-") as tmp:
        directory = Path(tmp)
        write_train_request(directory, config, splits, initial_weights,
                            progress=None if stream is None else {"interactive": interactive},
                            batches=wants_batches(forwarded), checkpoint_dir=checkpoint_dir)
        run_child(["--train", str(directory)], on_event=forwarder, out=stream)
        result = json.loads((directory / "result.json").read_text())
        if "non_finite" in result:
            raise NonFiniteLoss(*result["non_finite"])
        weights = load_weights(directory / "weights.npz")
    if weights_digest(weights) != result["weights_sha256"]:
        raise KerasJaxError("the weights read back from the keras-jax child differ from those it saved")
    return RunResult(impl="keras-jax", config=config, epochs=result["epochs"], test_loss=result["test_loss"],
                     test_accuracy=result["test_accuracy"], weights=weights)


def write_train_request(directory: Path, config: TrainConfig, splits: Splits, initial_weights: Weights,
                        progress: dict | None = None, batches: bool = False, checkpoint_dir=None) -> None:
    """What a `--train DIR` child reads: request.json, the split arrays, the initial weights."""
    checkpoint = None if checkpoint_dir is None else str(Path(checkpoint_dir).resolve())
    (directory / "request.json").write_text(json.dumps({"config": config.to_dict(), "progress": progress,
                                                        "batches": batches, "checkpoint_dir": checkpoint}))
    for field in SPLIT_FIELDS:
        np.save(directory / f"{field}.npy", getattr(splits, field), allow_pickle=False)
    save_weights(directory / "initial_weights.npz", initial_weights)


def weights_digest(weights: Weights) -> str:
    """SHA-256 of canonical weights: layer and array names in order, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for layer, params in weights.items():
        for key, value in params.items():
            a = np.ascontiguousarray(value)
            h.update(f"{layer}/{key}:{a.dtype.str}:{a.shape};".encode())
            h.update(a.tobytes())
    return h.hexdigest()


class _Forwarder:
    """Makes the child's project-callback calls on the parent's callbacks; answers each epoch_end."""

    def __init__(self, config: TrainConfig, callbacks):
        self.config, self.callbacks = config, CallbackList(callbacks)

    def __call__(self, event: dict):
        kind = event["event"]
        if kind == "train_begin":
            self.callbacks.on_train_begin(self.config)  # the parent's own config object
        elif kind == "epoch_begin":
            self.callbacks.on_epoch_begin(event["epoch"], event["num_steps"])
        elif kind == "batch_end":
            self.callbacks.on_batch_end(event["step"], event["logs"])
        elif kind == "epoch_end":
            self.callbacks.on_epoch_end(event["epoch"], event["logs"])
            return {"stop": bool(self.callbacks.stop_training)}
        elif kind == "train_end":
            self.callbacks.on_train_end(event["logs"])
        return None


# --------------------------------------------------------------------------- parent: the child process

def child_command(args, module: str = "keras_baseline.jax_backend") -> list[str]:
    """The command line of a child: `module` run by the parent's Python, unbuffered."""
    return [sys.executable, "-u", "-m", module, *args]


def child_env() -> dict:
    """The parent's environment with KERAS_BACKEND=jax and UTF-8 output (Keras's bar draws '━')."""
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONIOENCODING="utf-8")
    # Make this checkout importable in the child even when it is not installed (tests run from the tree).
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_child(args, on_event=None, out=None, command=None, timeout: float | None = None) -> None:
    """Run a child (`child_command(args)`, or `command`) to its end; see `Child`."""
    with Child(args, on_event=on_event, out=out, command=command, timeout=timeout) as child:
        child.wait()


class Child:
    """A child process, started at once; `wait()` relays what it sends until it ends.

    stdout text goes to `out` (dropped if None), stderr to this process's stderr; each JSON line on
    the events pipe is passed to `on_event(event)`, and a dict it returns is written back to the
    child's stdin as one JSON line. `wait()` raises `KerasJaxError` if the child fails or is still
    running `timeout` seconds after its start. Leaving the `with` block, normally or by any
    exception (Ctrl-C included), terminates a child that still runs.
    """

    def __init__(self, args, on_event=None, out=None, command=None, timeout: float | None = None):
        self.argv = list(command if command is not None else child_command(args))
        self.timeout = timeout
        read_events, write_events = os.pipe()
        try:
            self.proc = subprocess.Popen([*self.argv, "--events-fd", str(write_events)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         pass_fds=(write_events,), env=child_env())
        except BaseException:
            os.close(read_events)
            raise
        finally:
            os.close(write_events)  # the child holds its copy; EOF on ours means the child is gone
        self.relay = _Relay(self.proc, read_events, on_event, out, timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self) -> None:
        """Terminate the child if it still runs (SIGTERM, then SIGKILL after a grace period); close the pipes."""
        _stop(self.proc)
        self.relay.close()

    def wait(self) -> None:
        """Relay until the child ends; raise `KerasJaxError` unless it exited with status 0."""
        try:
            returncode = self.relay.run()
        finally:
            self.stop()
        relay = self.relay
        if relay.timed_out:
            raise KerasJaxError(f"the keras-jax child process ({' '.join(self.argv)}) ran past its "
                                f"{self.timeout:g} s limit and was stopped{relay.tail_text()}")
        if returncode != 0:
            how = (f"was killed by signal {_signal_name(-returncode)}" if returncode < 0
                   else f"exited with status {returncode}")
            what = f": {relay.error['type']}: {relay.error['message']}" if relay.error else ""
            raise KerasJaxError(f"the keras-jax child process ({' '.join(self.argv)}) {how}{what}"
                                f"{relay.tail_text()}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the child if it still runs (SIGTERM, then SIGKILL after a grace period) and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(TERMINATE_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Relay:
    """One loop over the child's stdout, stderr and events pipe, in arrival order, until all close."""

    def __init__(self, proc, events_fd, on_event, out, timeout):
        self.proc, self.on_event, self.out = proc, on_event, out
        self.deadline = None if timeout is None else time.monotonic() + timeout  # from the child's start
        self.events_file = os.fdopen(events_fd, "rb", buffering=0)
        self.tail = collections.deque(maxlen=STDERR_TAIL)
        self.error, self.timed_out = None, False
        self._partial = {"err": "", "events": b""}
        self._decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in ("out", "err")}

    def run(self) -> int | None:
        """Relay until the child closes all three pipes and exits; its exit status (None: timed out)."""
        deadline = self.deadline
        sel = selectors.DefaultSelector()
        # Registration order is the handling order within one wake-up: the child writes its progress
        # text before the event that follows it, so draining stdout first keeps the two in order.
        for fileobj, name in ((self.proc.stdout, "out"), (self.proc.stderr, "err"), (self.events_file, "events")):
            sel.register(fileobj, selectors.EVENT_READ, name)
        order = {"out": 0, "err": 1, "events": 2}
        try:
            while sel.get_map():
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                ready = sel.select(wait)
                if not ready and deadline is not None and time.monotonic() >= deadline:
                    self.timed_out = True
                    return None
                for key, _ in sorted(ready, key=lambda r: order[r[0].data]):
                    data = os.read(key.fd, 1 << 16)
                    if not data:
                        sel.unregister(key.fileobj)
                    getattr(self, f"_on_{key.data}")(data)
        finally:
            sel.close()
        try:  # the pipes are closed; the exit follows at once (a bounded wait all the same)
            return self.proc.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.timed_out = True
            return None

    def _on_out(self, data: bytes):
        text = self._decoders["out"].decode(data, final=not data)
        if text and self.out is not None:
            try:
                self.out.write(text)
            except UnicodeEncodeError:  # a stream that cannot show '━' (Keras itself falls back likewise)
                encoding = getattr(self.out, "encoding", None) or "ascii"
                self.out.write(text.encode(encoding, "replace").decode(encoding))
            self.out.flush()

    def _on_err(self, data: bytes):
        text = self._decoders["err"].decode(data, final=not data)
        if text:
            sys.stderr.write(text)
            sys.stderr.flush()
        lines = (self._partial["err"] + text).split("\n")
        self._partial["err"] = lines.pop() if data else ""
        self.tail.extend(line for line in lines if line.strip())

    def _on_events(self, data: bytes):
        lines = (self._partial["events"] + data).split(b"\n")
        self._partial["events"] = lines.pop() if data else b""
        for line in lines:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                raise KerasJaxError(f"the keras-jax child sent an unreadable event: {line[:200]!r}") from None
            if event.get("event") == "error":
                self.error = event
                continue
            reply = self.on_event(event) if self.on_event is not None else None
            if reply is not None:
                try:
                    self.proc.stdin.write(json.dumps(reply).encode() + b"\n")
                    self.proc.stdin.flush()
                except BrokenPipeError:  # the child died meanwhile; its exit status tells why
                    pass

    def tail_text(self) -> str:
        lines = list(self.tail) + ([self._partial["err"]] if self._partial["err"].strip() else [])
        if not lines:
            return " (it wrote nothing to stderr)"
        return "; the last lines of its stderr:\n" + "\n".join("    " + line for line in lines[-STDERR_TAIL:])

    def close(self):
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr, self.events_file):
            try:
                f.close()
            except OSError:
                pass


# --------------------------------------------------------------------------- child

class _PipeCallback(Callback):
    """In the child: sends each project-callback call to the parent; waits for its answer after an epoch."""

    def __init__(self, events, replies: queue.Queue):
        self.events, self.replies = events, replies

    def send(self, event: dict) -> None:
        sys.stdout.flush()  # Keras's progress text before the event that follows it (see _Relay.run)
        self.events.write(json.dumps(event) + "\n")
        self.events.flush()

    def on_train_begin(self, config):
        self.send({"event": "train_begin"})

    def on_epoch_begin(self, epoch, num_steps):
        self.send({"event": "epoch_begin", "epoch": epoch, "num_steps": num_steps})

    def on_epoch_end(self, epoch, logs):
        self.send({"event": "epoch_end", "epoch": epoch, "logs": logs})
        self.stop_training = bool(self.replies.get()["stop"])

    def on_train_end(self, logs):
        self.send({"event": "train_end", "logs": logs})


class _BatchPipeCallback(_PipeCallback):
    """Also sends on_batch_end: only used when a parent callback wants batches (a sync per step)."""

    def on_batch_end(self, step, logs):
        self.send({"event": "batch_end", "step": step, "logs": logs})


_PARENT_GONE = threading.Event()  # set by the watcher as soon as stdin closes
_CLEANED_UP = threading.Event()   # set once it has removed the request directory


def _watch_parent(replies: queue.Queue, directory: Path) -> None:
    """Queue the parent's answers from stdin; when stdin closes (the parent is gone), remove the
    request directory and exit the process at once."""
    def watch():
        pending = b""
        # os.read, not sys.stdin: a daemon thread blocked inside a buffered reader's lock aborts
        # the interpreter at shutdown.
        while chunk := os.read(0, 1 << 12):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                replies.put(json.loads(line))
        # A parent killed without its cleanup (SIGTERM, SIGKILL) leaves its temporary directory
        # (172 MB with the full training set); a parent that closes stdin normally has finished with
        # it, or is removing it itself. Nothing else to wait for: nobody wants the results.
        _PARENT_GONE.set()
        shutil.rmtree(directory, ignore_errors=True)
        _CLEANED_UP.set()
        os._exit(3)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _import_keras_on_jax():
    """`keras_baseline.train` and friends with Keras on JAX, TensorFlow blocked (module docstring)."""
    if "keras" in sys.modules:
        raise RuntimeError("keras was imported before the keras-jax child could choose its backend")
    os.environ["KERAS_BACKEND"] = "jax"
    sys.modules.setdefault("tensorflow", None)  # makes `import tensorflow` raise ImportError
    from keras_baseline import models, train

    if train.BACKEND != "jax":
        raise RuntimeError(f"Keras started on {train.BACKEND!r}, not jax")
    return models, train


def _child_train(directory: Path, events, replies: queue.Queue) -> None:
    request = json.loads((directory / "request.json").read_text())
    config = TrainConfig(**request["config"])
    splits = Splits(*(np.load(directory / f"{field}.npy") for field in SPLIT_FIELDS))
    weights = load_weights(directory / "initial_weights.npz")
    _, train = _import_keras_on_jax()
    callbacks = [(_BatchPipeCallback if request["batches"] else _PipeCallback)(events, replies)]
    if request["progress"] is not None:
        callbacks.insert(0, ProgressBar(sys.stdout, interactive=request["progress"]["interactive"]))
    extra = {} if request["checkpoint_dir"] is None else {"checkpoint_dir": Path(request["checkpoint_dir"])}
    try:
        result = train.train_and_evaluate(config, splits, weights, callbacks=callbacks, **extra)
    except NonFiniteLoss as e:  # a result, not a failure: the parent raises it again
        (directory / "result.json").write_text(json.dumps({"non_finite": [e.epoch, e.step, e.loss]}))
        return
    save_weights(directory / "weights.npz", result.weights)
    (directory / "result.json").write_text(json.dumps({
        "epochs": result.epochs, "test_loss": float(result.test_loss),
        "test_accuracy": float(result.test_accuracy), "weights_sha256": weights_digest(result.weights)}))


def run_as_child(work, directory: Path, events=None) -> int:
    """What every child does around its `work()`: leave Ctrl-C to the parent, watch the parent
    (stdin; `_watch_parent`), report a failure on `events` and with a traceback, exit status 1."""
    # The parent stops the child (Ctrl-C reaches the whole foreground process group): no second
    # KeyboardInterrupt traceback from here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies: queue.Queue = queue.Queue()
    _watch_parent(replies, directory)
    try:
        work(replies)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, then a non-zero exit
        if _PARENT_GONE.is_set():  # the watcher removed the files under our feet: its exit, not ours
            _CLEANED_UP.wait(timeout=30)
            os._exit(3)
        traceback.print_exc()
        if events is not None:
            events.write(json.dumps({"event": "error", "type": type(e).__name__, "message": str(e)}) + "\n")
            events.flush()
        return 1
    return 0


def main(argv=None) -> int:
    """The training child's entry point (`python -m keras_baseline.jax_backend --train DIR --events-fd N`)."""
    parser = argparse.ArgumentParser(prog="python -m keras_baseline.jax_backend", description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=Path, metavar="DIR", required=True, help="train as DIR/request.json asks")
    parser.add_argument("--events-fd", type=int, required=True, help="file descriptor for the JSON-lines events")
    args = parser.parse_args(argv)
    events = os.fdopen(args.events_fd, "w", encoding="utf-8")
    return run_as_child(lambda replies: _child_train(args.train, events, replies), args.train, events)


if __name__ == "__main__":
    sys.exit(main())
