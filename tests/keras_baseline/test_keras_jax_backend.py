"""--impl keras-jax: the child process runs, its failures surface, callbacks and progress reach the
parent, weights come back exact, and the parent never imports Keras, TensorFlow or JAX.

One real run per session (`real_run`: a fresh interpreter as the parent, 3 epochs on 100 random
images, ~5-10 s on 2 cores). Everything about the relay itself is tested with tiny fake children
(`python -c ...`) that start in a fraction of a second.
"""

import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

if not all(importlib.util.find_spec(m) for m in ("keras", "jax")):
    pytest.skip("keras-jax needs keras and jax", allow_module_level=True)

from fmnist.config import TrainConfig  # noqa: E402
from fmnist.history import EPOCH_KEYS  # noqa: E402
from fmnist.weights import KERNEL_SHAPES, init_weights, load_weights  # noqa: E402
from keras_baseline import child_launcher, jax_backend  # noqa: E402
from keras_baseline.child_launcher import KerasJaxError  # noqa: E402

# --------------------------------------------------------------------------- one real run

REAL_RUN = """
import importlib, io, json, sys
import numpy as np
from fmnist.app import runner
from fmnist.callbacks import Callback, History, ProgressBar
from fmnist.config import TrainConfig
from fmnist.data import Splits
from fmnist.weights import init_weights, save_weights

class Recorder(Callback):
    def __init__(self):
        self.calls = []
    def on_train_begin(self, config): self.calls.append(["train_begin", config is CONFIG])
    def on_epoch_begin(self, epoch, num_steps): self.calls.append(["epoch_begin", epoch, num_steps])
    def on_epoch_end(self, epoch, logs): self.calls.append(["epoch_end", epoch, logs])
    def on_train_end(self, logs): self.calls.append(["train_end", logs])

class StopAfterSecondEpoch(Callback):
    def on_epoch_end(self, epoch, logs):
        self.stop_training = epoch == 1

rng = np.random.default_rng(0)
def part(n):  # images like fmnist.data.preprocess makes them, and labels
    return rng.integers(0, 256, (n, 28, 28, 1)).astype(np.float32) / np.float32(255), rng.integers(0, 10, n).astype(np.int32)
splits = Splits(*part(100), *part(50), *part(50))
CONFIG = TrainConfig(epochs=3, batch_size=32, val_size=50)
runner.preflight(["keras-jax"], CONFIG)
importlib.import_module(runner.TRAIN_MODULES["keras-jax"]).check(CONFIG)
stream, recorder = io.StringIO(), Recorder()
result = runner.get_trainer("keras-jax")(CONFIG, splits, init_weights("mlp"),
    callbacks=[ProgressBar(stream, interactive=False), History(), recorder, StopAfterSecondEpoch()])
save_weights(sys.argv[1], result.weights)
json.dump({"impl": result.impl, "epochs": result.epochs, "test_loss": result.test_loss,
           "test_accuracy": result.test_accuracy, "calls": recorder.calls, "progress": stream.getvalue(),
           "dtypes": {l: {k: str(v.dtype) for k, v in p.items()} for l, p in result.weights.items()},
           "imported": {m: m in sys.modules for m in ("keras", "tensorflow", "jax")}}, sys.stdout)
"""


@pytest.fixture(scope="session")
def real_run(tmp_path_factory):
    """The report of REAL_RUN: `runner.get_trainer("keras-jax")` in a fresh parent interpreter."""
    weights_path = tmp_path_factory.mktemp("keras-jax") / "weights.npz"
    out = subprocess.run([sys.executable, "-c", REAL_RUN, str(weights_path)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)  # nothing but the report on stdout: progress went to the stream
    report["weights"] = load_weights(weights_path)
    return report


def test_the_parent_never_imports_keras_tensorflow_or_jax(real_run):
    assert real_run["imported"] == {"keras": False, "tensorflow": False, "jax": False}


def test_callbacks_get_their_calls_in_the_parent_epoch_by_epoch(real_run):
    """train_begin (with the parent's own config), epoch_begin/epoch_end per epoch with the epoch's
    row, train_end with the test metrics; a parent callback's stop_training stops the child's fit."""
    calls, epochs = real_run["calls"], real_run["epochs"]
    assert len(epochs) == 2  # 3 asked, stopped after the second by StopAfterSecondEpoch
    assert calls == [["train_begin", True],
                     ["epoch_begin", 0, 4], ["epoch_end", 0, epochs[0]],
                     ["epoch_begin", 1, 4], ["epoch_end", 1, epochs[1]],
                     ["train_end", {"test_loss": real_run["test_loss"], "test_accuracy": real_run["test_accuracy"]}]]
    assert [list(row) for row in epochs] == [list(EPOCH_KEYS)] * 2
    assert real_run["impl"] == "keras-jax"


def test_keras_progress_reaches_the_progress_bar_stream(real_run):
    """What `--impl keras` prints (Keras's verbose=2 lines, not the project's bar), via the child's stdout."""
    out = real_run["progress"]
    assert out.count("Epoch 1/3\n") == 1 and out.count("Epoch 2/3\n") == 1 and "Epoch 3/3" not in out
    assert out.count("4/4 - ") == 2 and "val_loss" in out and "[===" not in out
    assert out.endswith(f"test_loss: {real_run['test_loss']:.4f} - test_accuracy: {real_run['test_accuracy']:.4f}\n")


def test_weights_come_back_in_canonical_format(real_run):
    """Layer order, shapes, float32. (Bit-exactness is checked on every run: the child sends a SHA-256
    of its weights, see `test_weights_digest_sees_one_ulp`; parity_tests/test_keras_jax.py compares
    them bit for bit with `train_on_batch` on the same batches.)"""
    weights = real_run["weights"]
    assert list(weights) == list(KERNEL_SHAPES["mlp"])
    for layer, shape in KERNEL_SHAPES["mlp"].items():
        assert weights[layer]["kernel"].shape == shape and weights[layer]["bias"].shape == (shape[-1],)
    assert real_run["dtypes"] == {layer: {"kernel": "float32", "bias": "float32"} for layer in weights}
    assert all(np.isfinite(a).all() for p in weights.values() for a in p.values())


def test_weights_digest_sees_one_ulp():
    weights = init_weights("mlp")
    digest = jax_backend.weights_digest(weights)
    assert jax_backend.weights_digest({l: {k: v.copy() for k, v in p.items()} for l, p in weights.items()}) == digest
    nudged = {l: {k: v.copy() for k, v in p.items()} for l, p in weights.items()}
    nudged["dense_1"]["kernel"][3, 4] = np.nextafter(nudged["dense_1"]["kernel"][3, 4], np.float32(1))
    assert jax_backend.weights_digest(nudged) != digest
    as_float64 = {l: {k: v.astype(np.float64) for k, v in p.items()} for l, p in weights.items()}
    assert jax_backend.weights_digest(as_float64) != digest


# --------------------------------------------------------------------------- refused before any child

def test_refusals_come_before_a_child_is_started():
    start = time.perf_counter()
    with pytest.raises(ValueError, match="epsilon-hat"):
        jax_backend.check(TrainConfig(adam_convention="paper"))
    jax_backend.check(TrainConfig(adam_convention="keras"))
    with pytest.raises(ValueError, match="epsilon-hat"):
        jax_backend.train_and_evaluate(TrainConfig(adam_convention="paper"), None, init_weights("mlp"))
    with pytest.raises(ValueError, match="must have layers"):
        jax_backend.train_and_evaluate(TrainConfig(model="cnn"), None, init_weights("mlp"))
    assert time.perf_counter() - start < 1.0  # no child start (seconds) was paid


def test_the_parent_side_modules_import_no_framework():
    """Importing every module of the keras-jax parent side (and the child's runtime, before it picks
    its backend) imports neither Keras, TensorFlow nor JAX."""
    code = ("import sys\nfrom keras_baseline import child_launcher, child_runtime, jax_backend, jax_parity\n"
            "print(sorted(m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_runner_knows_keras_jax():
    from fmnist.app import runner

    assert runner.get_trainer("keras-jax") is jax_backend.train_and_evaluate


# --------------------------------------------------------------------------- the relay, with fake children

def fake(code: str, *args) -> list[str]:
    """A child command running `code`; the relay appends `--events-fd N`, so sys.argv[-1] is N."""
    return [sys.executable, "-c", textwrap.dedent(code), *args]


EVENTS = "import json, os, sys\nevents = os.fdopen(int(sys.argv[-1]), 'w')\n"


def test_a_failing_child_raises_with_its_last_stderr_lines():
    code = "import sys\nfor i in range(30): print(f'line {i}', file=sys.stderr)\nsys.exit(3)"
    with pytest.raises(KerasJaxError, match="exited with status 3") as info:
        child_launcher.run_child(None, command=fake(code))
    message = str(info.value)
    assert "line 29" in message and "line 10" in message and "line 9\n" not in message  # the last 20


def test_the_childs_exception_is_named_in_the_error():
    code = EVENTS + """
import traceback
try:
    raise ValueError("boom in the child")
except ValueError as e:
    traceback.print_exc()
    events.write(json.dumps({"event": "error", "type": "ValueError", "message": str(e)}) + "\\n")
    events.flush()
    sys.exit(1)
"""
    with pytest.raises(KerasJaxError, match=r"exited with status 1: ValueError: boom in the child.*"
                                            r"last lines of its stderr:\n.*Traceback"):
        child_launcher.run_child(None, command=fake(code))


def test_a_killed_child_is_reported_as_such():
    code = "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"
    with pytest.raises(KerasJaxError, match=r"killed by signal SIGKILL \(it wrote nothing to stderr\)"):
        child_launcher.run_child(None, command=fake(code))


def test_a_child_past_its_time_limit_is_stopped(tmp_path):
    pid_file = tmp_path / "pid"
    code = "import os, sys, time\nopen(sys.argv[1], 'w').write(str(os.getpid()))\ntime.sleep(60)"
    start = time.perf_counter()
    with pytest.raises(KerasJaxError, match="ran past its 1 s limit"):
        child_launcher.run_child(None, command=fake(code, str(pid_file)), timeout=1)
    assert time.perf_counter() - start < 10
    assert_gone(int(pid_file.read_text()))


def assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_progress_text_is_relayed_byte_for_byte_and_before_the_next_event():
    """Keras's redraws ('\\r', '\\b'), its bar characters even when split between writes, and the
    order: text written before an event has reached the stream when the event is handled."""
    code = EVENTS + """
out = sys.stdout.buffer
out.write("Epoch 1/1\\n".encode()); out.flush()
events.write(json.dumps({"event": "epoch_begin", "epoch": 0, "num_steps": 4}) + "\\n"); events.flush()
bar = "\\r\\b\\b 4/4 ━━ done\\n".encode()
out.write(bar[:6]); out.flush()  # cuts the first '━' (3 bytes in UTF-8) in two
import time; time.sleep(0.05)
out.write(bar[6:]); out.flush()
"""
    stream, seen = io.StringIO(), []
    child_launcher.run_child(None, command=fake(code), out=stream, on_event=lambda e: seen.append(stream.getvalue()))
    assert stream.getvalue() == "Epoch 1/1\n\r\b\b 4/4 ━━ done\n"
    assert len(seen) == 1 and seen[0].startswith("Epoch 1/1\n")  # (later text may have arrived too)


def test_the_parents_answer_reaches_the_child():
    """After an epoch_end the child reads the parent's {"stop": ...} from its stdin."""
    code = EVENTS + """
events.write(json.dumps({"event": "epoch_end", "epoch": 0, "logs": {}}) + "\\n"); events.flush()
answer = json.loads(sys.stdin.readline())
sys.exit(0 if answer == {"stop": True} else 5)
"""
    child_launcher.run_child(None, command=fake(code), on_event=lambda e: {"stop": True})


def test_ctrl_c_in_the_parent_stops_the_child(tmp_path):
    pid_file = tmp_path / "pid"
    parent = f"""
import sys
from keras_baseline import child_launcher
code = "import os, sys, time\\nopen(sys.argv[1], 'w').write(str(os.getpid()))\\ntime.sleep(60)"
child_launcher.run_child(None, command=[sys.executable, "-c", code, {str(pid_file)!r}])
"""
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(pid_file.read_text())
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert_gone(child)


def test_a_child_whose_parent_is_gone_exits(tmp_path, tiny_splits):
    """The real child: when its stdin (held by the parent) closes, it removes the request directory
    and exits at once, mid-import."""
    # A valid request, so that the child is busy for seconds (importing Keras) when stdin closes.
    request = tmp_path / "request"
    request.mkdir()
    jax_backend.write_train_request(request, TrainConfig(epochs=1), tiny_splits, init_weights("mlp"))
    read_events, write_events = os.pipe()
    try:
        proc = subprocess.Popen([*child_launcher.child_command(["--train", str(request)]), "--events-fd", str(write_events)],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                pass_fds=(write_events,), env=child_launcher.child_env())
        proc.stdin.close()
        proc.wait(timeout=60)
        err = proc.stderr.read().decode()
    finally:
        os.close(read_events)
        os.close(write_events)
    assert proc.returncode == 3, err  # the watcher's exit status (a finished run would give 0)
    assert not request.exists()  # a parent killed without cleanup leaves no 172 MB behind
