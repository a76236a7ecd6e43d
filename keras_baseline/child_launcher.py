"""Starting a keras-jax child process, relaying what it sends to the parent, stopping it.

A child is `python -u -m MODULE ARGS --events-fd N` with KERAS_BACKEND=jax (`keras_baseline.jax_backend`
trains in one, `keras_baseline.jax_parity` computes the parity suite's numbers in one). Its channels:

    child stdout    text, copied to the parent's `out` stream as it comes (Keras's progress output).
    child stderr    copied to the parent's stderr; its last lines go into the error if the child fails.
    fd N            JSON lines, one event each, handed to the parent's `on_event` as they arrive
                    (an {"event": "error"} line names the child's exception instead).
    child stdin     a dict that `on_event` returns goes back as one JSON line. End of file means the
                    parent is gone (the child then exits: `keras_baseline.child_runtime`).

A child that fails (exit status != 0, killed, or past its time limit) raises `KerasJaxError` with its
last stderr lines. Ctrl-C in the parent terminates the child (which ignores SIGINT itself, so it is
stopped by the parent, once, and prints no traceback of its own). This module imports neither
Keras, JAX nor TensorFlow.
"""

from __future__ import annotations

import codecs
import collections
import importlib.util
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

# Found without importing them, so that `fmnist.app.runner.preflight` refuses keras-jax cheaply when
# the child could not run (ImportError with `name` is what the runner turns into its message).
for _name in ("keras", "jax"):
    if importlib.util.find_spec(_name) is None:
        raise ImportError(f"--impl keras-jax needs {_name} (Keras 3 on its JAX backend)", name=_name)

STDERR_TAIL = 20        # stderr lines of a failed child quoted in the error
TERMINATE_GRACE_S = 5   # after SIGTERM, how long a child gets before SIGKILL


class KerasJaxError(RuntimeError):
    """The keras-jax child process failed; the message quotes its last stderr lines."""


def child_command(args, module: str = "keras_baseline.jax_backend") -> list[str]:
    """The command line of a child: `module` (by default the training child) run by the parent's Python, unbuffered."""
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
