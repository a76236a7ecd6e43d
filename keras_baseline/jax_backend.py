"""--impl keras-jax: the unchanged `keras_baseline` model and training code on Keras 3's JAX backend.

Why a child process. Keras picks its backend once, at the first `import keras`, and the process
that asks for keras-jax may already hold Keras on TensorFlow (`fmnist compare --impls keras
keras-jax`, the parity suite). So `train_and_evaluate` here starts

    python -m keras_baseline.jax_backend --train DIR --events-fd N     (KERAS_BACKEND=jax)

and the parent (this module, imported) imports neither Keras, JAX nor TensorFlow. The parent's side
is `check` and `train_and_evaluate` (what `fmnist.app.runner` calls for keras-jax); the child's side
is `main`, which runs `keras_baseline.train.train_and_evaluate`. What the two say to each other:

    DIR             request.json (config, progress mode), the six split arrays as .npy (np.save: the
                    training set is 172 MB, too big to pickle through a pipe), initial_weights.npz;
                    the child writes result.json (history rows, test metrics, a SHA-256 of the final
                    weights, checked by the parent) and weights.npz.
    child stdout    Keras's own progress output, copied to the parent's ProgressBar stream as it comes.
    fd N            JSON lines, one per project-callback call in the child (train_begin, epoch_begin,
                    batch_end when some callback wants it, epoch_end with the epoch's row, train_end):
                    the parent makes the same calls on its callbacks as they arrive.
    child stdin     after each epoch_end the parent answers {"stop": bool}, its callbacks' stop_training.
                    End of file means the parent is gone: the child removes DIR and exits at once.

How a child is started, relayed, stopped and its failure reported: `keras_baseline.child_launcher`
(the parent's side) and `keras_baseline.child_runtime` (the child's side, where TensorFlow is blocked).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import sys
import tempfile
from pathlib import Path

import numpy as np

from fmnist.callbacks import Callback, CallbackList, ProgressBar
from fmnist.config import TrainConfig
from fmnist.data import Splits
from fmnist.history import RunResult
from fmnist.loop import NonFiniteLoss
from fmnist.weights import Weights, check_weights, load_weights, save_weights
from keras_baseline import rules
from keras_baseline.child_launcher import KerasJaxError, run_child
from keras_baseline.child_runtime import import_keras_on_jax, run_as_child
from keras_baseline.verbosity import split_progress, wants_batches

SPLIT_FIELDS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


# --------------------------------------------------------------------------- parent

def check(config: TrainConfig) -> None:
    """Raise ValueError if keras-jax cannot run `config`: the rules of `--impl keras` (`keras_baseline.rules`)."""
    rules.check(config)


def train_and_evaluate(config: TrainConfig, splits: Splits, initial_weights: Weights,
                       callbacks=(), checkpoint_dir=None) -> RunResult:
    """Train and evaluate like `keras_baseline.train.train_and_evaluate`, on Keras's JAX backend, in a child.

    A `ProgressBar` among `callbacks` gets Keras's own progress output on its stream; the other
    project callbacks get their calls here, epoch by epoch as the child runs. `checkpoint_dir`, when
    given, is handed to `keras_baseline.train.train_and_evaluate` in the child unchanged, so that
    keras-jax does what `--impl keras` does with it.
    """
    check(config)  # refuse before paying for a child start
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


# --------------------------------------------------------------------------- child

class _PipeCallback(Callback):
    """In the child: sends each project-callback call to the parent; waits for its answer after an epoch."""

    def __init__(self, events, replies: queue.Queue):
        self.events, self.replies = events, replies

    def send(self, event: dict) -> None:
        sys.stdout.flush()  # Keras's progress text before the event that follows it (child_launcher._Relay.run)
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


def _child_train(directory: Path, events, replies: queue.Queue) -> None:
    request = json.loads((directory / "request.json").read_text())
    config = TrainConfig(**request["config"])
    splits = Splits(*(np.load(directory / f"{field}.npy") for field in SPLIT_FIELDS))
    weights = load_weights(directory / "initial_weights.npz")
    _, train = import_keras_on_jax()
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
