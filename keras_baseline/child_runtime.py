"""What runs in every keras-jax child process around its work: Keras on JAX, a watch on the parent.

`import_keras_on_jax()` imports `keras_baseline.models` and `keras_baseline.train` with Keras on its
JAX backend and TensorFlow blocked (`sys.modules["tensorflow"] = None` before `import keras`):
`keras.utils.set_random_seed` imports TensorFlow whenever it is installed, to seed `tf.data` (3-5 s
and 0.6 GB per child here, for a run that uses no tf.data), and blocking it shows the run needs none.

`run_as_child(work, directory, events)` runs `work` with Ctrl-C left to the parent, queues the
parent's answers from stdin and, when stdin closes (the parent is gone), removes `directory` and
exits at once; a failure of `work` is printed with its traceback and sent as an "error" event.
`keras_baseline.child_launcher` is the parent's side. Used by the training child
(`keras_baseline.jax_backend`) and the parity worker (`keras_baseline.jax_parity`).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import sys
import threading
import traceback
from pathlib import Path

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


def import_keras_on_jax():
    """`keras_baseline.train` and friends with Keras on JAX, TensorFlow blocked (module docstring)."""
    if "keras" in sys.modules:
        raise RuntimeError("keras was imported before the keras-jax child could choose its backend")
    os.environ["KERAS_BACKEND"] = "jax"
    sys.modules.setdefault("tensorflow", None)  # makes `import tensorflow` raise ImportError
    from keras_baseline import models, train

    if train.BACKEND != "jax":
        raise RuntimeError(f"Keras started on {train.BACKEND!r}, not jax")
    return models, train


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
