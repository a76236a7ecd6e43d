"""Runs that survive: per-epoch checkpoints, bit-exact resume, stop on a non-finite loss, strict
JSON, the run-directory lock; and property-based tests of what parses files (hypothesis)."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmnist import jsonio
from fmnist.callbacks import Callback
from fmnist.config import TrainConfig
from fmnist.data import DataError, IdxFile, read_idx
from fmnist.loop import NonFiniteLoss
from fmnist.app.rundir import RunDirError, RunLock, read_run_meta, write_run_meta
from fmnist.weights import init_weights

SMALL = dict(val_size=300, train_limit=1000, test_limit=300)
# The resume tests train every model three times (whole, interrupted, resumed): kept small.
RESUME = {"mlp": (dict(val_size=200, train_limit=600, test_limit=200), 3, 2),   # sizes, epochs, stop after
          "cnn": (dict(val_size=100, train_limit=200, test_limit=100), 2, 1)}


def strict_loads(text: str):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def small(real_splits):
    return real_splits(**SMALL)


def config(model="mlp", **kw):
    return TrainConfig(model=model, val_size=SMALL["val_size"], train_limit=SMALL["train_limit"], **kw)


class InterruptAfter(Callback):
    """Ctrl-C arriving just after epoch `epoch` (1-based) has finished."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs):
        if epoch + 1 == self.epoch:
            raise KeyboardInterrupt


def trainer(impl):
    import importlib

    if impl == "keras":
        pytest.importorskip("tensorflow", reason="TensorFlow is not installed")
    return importlib.import_module({"handrolled": "handrolled.train", "flax": "flax_impl.train",
                                    "nnx": "nnx_impl.train", "keras": "keras_baseline.train",
                                    "keras-jax": "keras_baseline.jax_backend"}[impl]
                                   ).train_and_evaluate


def without_seconds(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


JAX_IMPLS = ["handrolled", "flax", "nnx"]
ALL_IMPLS = [*JAX_IMPLS, "keras", "keras-jax"]


# Every implementation on the MLP; the CNN (slow to compile three times) in the hand-rolled one,
# which shares the loop and the checkpointing with Flax and NNX (fmnist.loop.fit). Keras resumes
# from its own saved variables (keras_baseline.checkpoint) with fit(initial_epoch=...), and
# keras-jax runs that same code in its child: measured bit-identical too, on both backends.
@pytest.mark.parametrize("impl, model", [*[(impl, "mlp") for impl in ALL_IMPLS], ("handrolled", "cnn")])
def test_resume_equals_uninterrupted_bit_for_bit(impl, model, real_splits, tmp_path):
    sizes, epochs, stop_after = RESUME[model]
    splits = real_splits(**sizes)
    cfg = TrainConfig(model=model, epochs=epochs, val_size=sizes["val_size"], train_limit=sizes["train_limit"])
    train = trainer(impl)
    weights = init_weights(model)
    whole = train(cfg, splits, weights)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, splits, weights, [InterruptAfter(stop_after)], checkpoint_dir=tmp_path / "checkpoint")
    resumed = train(cfg, splits, weights, [], checkpoint_dir=tmp_path / "checkpoint")
    assert without_seconds(resumed.epochs) == without_seconds(whole.epochs)
    assert (resumed.test_loss, resumed.test_accuracy) == (whole.test_loss, whole.test_accuracy)
    for layer in whole.weights:
        for kind in ("kernel", "bias"):
            assert np.array_equal(resumed.weights[layer][kind], whole.weights[layer][kind]), (layer, kind)


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_a_non_finite_loss_stops_training_at_its_step(impl, small):
    cfg = config("mlp", epochs=2, optimizer="sgd", lr=1e30)
    with pytest.raises(NonFiniteLoss) as stopped:
        trainer(impl)(cfg, small, init_weights("mlp"))
    assert stopped.value.epoch == 1 and stopped.value.step >= 2  # step 1's loss is finite (pre-update)
    assert "epoch 1, step" in str(stopped.value)
    trained_on = trainer(impl)(TrainConfig(**{**cfg.to_dict(), "terminate_on_nan": False, "epochs": 1}),
                               small, init_weights("mlp"))
    assert math.isnan(trained_on.epochs[0]["loss"])


def test_strict_json_has_no_nan_tokens():
    text = jsonio.dumps({"loss": float("nan"), "rows": [{"a": float("inf")}, (1.5, -float("inf"))],
                         "n": np.float32(0.25)})
    assert strict_loads(text) == {"loss": None, "rows": [{"a": None}, [1.5, None]], "n": 0.25}


def test_the_lock_refuses_a_second_run(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunDirError, match="in use by a run in progress"):
            with RunLock(tmp_path):
                pass
    with RunLock(tmp_path):  # released
        pass


# ----------------------------------------------------------------------- property-based tests

SPEC = IdxFile("x.gz", 0x0803, (3, 2, 2), sha256="")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=64))
def test_idx_parsing_of_any_bytes_is_a_data_error_or_the_array(tmp_path, raw):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(raw))
    try:
        out = read_idx(path, SPEC, verify=False)
    except DataError:
        return
    assert raw[:4] == bytes([0, 0, 8, 3]) and len(raw) == 16 + 12 and out.shape == (3, 2, 2)
    assert out.tobytes() == raw[16:]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=64))
def test_a_damaged_gzip_stream_is_a_data_error(tmp_path, raw):
    path = tmp_path / "x.gz"
    path.write_bytes(raw)
    with pytest.raises(DataError):
        read_idx(path, SPEC, verify=False)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 255), min_size=12, max_size=12), st.sampled_from([0, 1, 5]))
def test_well_formed_idx_round_trips(tmp_path_factory, pixels, cut):
    payload = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (3, 2, 2)) + bytes(pixels)
    path = tmp_path_factory.mktemp("idx") / "x.gz"
    path.write_bytes(gzip.compress(payload[:len(payload) - cut]))
    if cut:
        with pytest.raises(DataError, match="truncated"):
            read_idx(path, SPEC, verify=False)
    else:
        assert read_idx(path, SPEC, verify=False).ravel().tolist() == pixels


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=80).map(lambda b: b.decode("latin-1")),
                 st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
                              lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                              max_leaves=8).map(json.dumps)))
def test_run_json_of_any_content_reads_or_is_refused_in_one_line(tmp_path, text):
    (tmp_path / "run.json").write_text(text)
    try:
        impl, cfg = read_run_meta(tmp_path)
    except RunDirError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(cfg, TrainConfig) and isinstance(impl, str)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=120))
def test_a_history_file_of_any_bytes_counts_its_epochs_or_none(tmp_path, raw):
    """`finished_epochs` (what --resume checks --epochs against) reads any history.json without
    raising: the number of epochs it lists, or 0 when it is not a history."""
    from fmnist.app.rundir import finished_epochs

    (tmp_path / "history.json").write_bytes(raw)
    n = finished_epochs(tmp_path)
    assert isinstance(n, int) and n >= 0


def test_run_json_round_trips(tmp_path):
    cfg = config("cnn", epochs=4, lr=3e-4)
    write_run_meta(tmp_path, "flax", cfg)
    assert read_run_meta(tmp_path) == ("flax", cfg)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_a_damaged_checkpoint_is_refused_in_one_line(tmp_path_factory, data):
    """Overwrite one file of a real checkpoint with arbitrary bytes: restoring either still gives
    the saved state (the byte change hit nothing that is read) or raises CheckpointError."""
    import jax

    from fmnist.checkpoints import CheckpointError, Checkpointer
    from handrolled import train as ht
    from handrolled.models import from_weights

    directory = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    model = from_weights("mlp", init_weights("mlp"))
    optimizer = ht.make_optimizer(TrainConfig())
    state = (model, optimizer.init(model))
    ckpt = Checkpointer(directory)
    ckpt.save(1, state, [{"epoch": 1, "loss": 1.0}])
    ckpt.close()
    files = sorted(p for p in Path(directory).rglob("*") if p.is_file())
    victim = files[data.draw(st.integers(0, 10**6)) % len(files)]  # file names vary from run to run
    victim.write_bytes(data.draw(st.binary(max_size=200)))
    ckpt = Checkpointer(directory)
    try:
        restored = ckpt.restore(like=state)
    except CheckpointError as e:
        assert "\n" not in str(e)
        return
    finally:
        ckpt.close()
    if restored is not None:
        leaves = jax.tree.leaves(restored[0])
        assert all(np.array_equal(a, b) for a, b in zip(leaves, jax.tree.leaves(state)))


# ----------------------------------------------------------------------- the command line

def fmnist(*args, timeout=300, **kw):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "fmnist.app", *args], capture_output=True, text=True,
                          timeout=timeout, **kw)


CLI_RUN = ["--model", "mlp", "--train-limit", "2000", "--val-size", "500"]


def test_sigkill_mid_run_leaves_a_resumable_run_equal_to_an_uninterrupted_one(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from fmnist.weights import load_weights

    whole = fmnist("train", *CLI_RUN, "--epochs", "4", "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    killed_dir = tmp_path / "killed"
    # steps-per-call 1: many small calls, so the kill lands mid-epoch rather than between runs
    proc = subprocess.Popen([sys.executable, "-m", "fmnist.app", "train", *CLI_RUN, "--epochs", "4",
                             "--steps-per-call", "1", "--out", str(killed_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if len(strict_loads((killed_dir / "history.json").read_text())["epochs"]) >= 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    history = strict_loads((killed_dir / "history.json").read_text())  # strict JSON after the kill
    assert history["status"] == "running" and 2 <= len(history["epochs"]) < 4
    assert not (killed_dir / "weights.npz").exists()
    resumed = fmnist("train", "--resume", str(killed_dir))
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_weights(tmp_path / "whole" / "weights.npz"), load_weights(killed_dir / "weights.npz")
    assert all(np.array_equal(a[l][k], b[l][k]) for l in a for k in a[l])
    ha, hb = (strict_loads((d / "history.json").read_text()) for d in (tmp_path / "whole", killed_dir))
    assert without_seconds(ha["epochs"]) == without_seconds(hb["epochs"]) and ha["test_loss"] == hb["test_loss"]


def test_ctrl_c_saves_what_is_finished_and_says_how_to_resume(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "fmnist.app", "train", *CLI_RUN, "--epochs", "50",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            if strict_loads((out / "history.json").read_text())["epochs"]:
                break
        except (OSError, ValueError):
            time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"Resume with: fmnist train --resume {out}" in err
    history = strict_loads((out / "history.json").read_text())
    assert history["status"] == "interrupted" and history["epochs"]


def test_a_ctrl_c_during_a_save_comes_after_the_save_is_under_way(tmp_path):
    """A KeyboardInterrupt inside Orbax's save could leave its threads unknown to close(), and the
    process unable to exit: Checkpointer holds Ctrl-C back until Orbax has the write, which completes."""
    import signal

    import jax.numpy as jnp

    from fmnist.checkpoints import Checkpointer

    ckpt = Checkpointer(tmp_path / "checkpoint")
    save = ckpt.manager.save

    def interrupted(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        return save(*args, **kwargs)

    ckpt.manager.save = interrupted
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(1, {"w": jnp.ones(3)}, [{"epoch": 1, "loss": 0.5}])
    ckpt.close()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert Checkpointer(tmp_path / "checkpoint").latest_epoch() == 1


def test_an_existing_run_is_never_overwritten_by_accident(tmp_path):
    out = tmp_path / "run"
    assert fmnist("train", *CLI_RUN, "--epochs", "1", "--out", str(out)).returncode == 0
    files = lambda: {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}  # noqa: E731
    before = files()
    again = fmnist("train", *CLI_RUN, "--epochs", "1", "--lr", "0.01", "--out", str(out))
    assert again.returncode == 2 and "already holds a run" in again.stderr and len(again.stderr.splitlines()) == 1
    assert files() == before
    replaced = fmnist("train", *CLI_RUN, "--epochs", "1", "--lr", "0.01", "--out", str(out), "--overwrite")
    assert replaced.returncode == 0 and strict_loads((out / "history.json").read_text())["config"]["lr"] == 0.01
    contradicted = fmnist("train", "--resume", str(out), "--lr", "0.1")
    assert contradicted.returncode == 2 and "--lr 0.1 contradicts" in contradicted.stderr


def test_a_diverging_run_stops_with_one_line_and_strict_json(tmp_path):
    out = tmp_path / "run"
    run = fmnist("train", *CLI_RUN, "--epochs", "2", "--optimizer", "sgd", "--lr", "1e30", "--out", str(out))
    assert run.returncode == 3
    errors = [line for line in run.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "epoch 1, step" in errors[0]
    history = strict_loads((out / "history.json").read_text())
    assert history["status"] == "non-finite loss" and history["stopped_at"]["epoch"] == 1
