"""Data parallel training (`fmnist.fastpath.sharding`): N devices train what one device trains, to
summation order, and so do two processes.

The N-device runs happen in child processes started with forced CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8 in their environment, before JAX starts): a
process cannot change its device count once JAX is up, and this one keeps its single device. Each
child trains through `fmnist.app.runner.run` (sharding_worker.py), so through each implementation's
own `make_run_steps(config, ...)`, the shared loop, validation and the test set.

What differs between 1 and N devices is only the order of additions: each device sums the gradient
(and the loss, and the correct count) over its B/N rows, and the all-reduce the compiler inserts
adds the N partial sums; one device adds the B rows in its own order. So the parameters agree to a
few float32 roundings, amplified by Adam (parity_tests/README.md, "Why trajectories separate":
Adam's first step moves a weight whose gradient is below ~1e-6 by up to 316 times the gradient's
rounding difference), and the history's metrics mean the same: the loss is the mean over the whole
batch, the correct counts are summed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from fmnist.app import runner
from fmnist.app.cli import main as fmnist_main
from fmnist.config import TrainConfig
from fmnist.fastpath.sharding import check_devices
from fmnist.weights import load_weights
from keras_baseline import rules as keras_rules

FORCED = 8  # CPU devices in the children
WORKER = Path(__file__).with_name("sharding_worker.py")

# Max |diff| over all parameters (|theta| up to ~0.5), N devices against 1. Measured, seed 0,
# batch 32, 1000 examples held out, jax 0.12.0.1 / jax 0.10.2:
#                           2 devices           8 devices
#   MLP after 10 steps      1.2e-7 / 2.0e-7     2.5e-7 / 3.8e-7
#   MLP after 100 steps     4.3e-7 / 3.7e-7     4.0e-7 / 2.7e-7   (seed 1, or none held out: <= 3.6e-7)
#   CNN after 10 steps      0 / 0               4.2e-7 / 5.9e-7
# Asserted 2e-6, about 4x the worst: a few ulps of the gradients' terms times Adam's 316 (above).
# The 2-device CNN is exact: on one device the fast path computes the CNN's gradient in 2 slices
# weighted 1/2 (exact: a power of two), on 2 devices each device computes one of the same two
# halves, so both add the same two partial sums. A trajectory can still separate at a ReLU or
# max-pool near-tie, as between implementations: with no examples held out (another training set),
# the 8-device CNN was 1.2e-5 from one device after 10 steps, and one device with the gradient in
# 1 slice instead of 2 separates as far; such a case is a flipped decision, not a bug.
PARAM_TOL = 2e-6
# The epoch's mean training loss and the validation and test losses (~0.5-2.3): measured <= 7e-8.
LOSS_TOL = 1e-6


def child_env(devices: int | None) -> dict:
    """This environment for a child JAX on CPU with `devices` forced CPU devices (None: JAX's own 1)."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    if devices:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    env["XLA_FLAGS"], env["JAX_PLATFORMS"] = " ".join(flags), "cpu"
    return env


def max_diff(a, b) -> float:
    return max(float(np.max(np.abs(a[layer][k] - b[layer][k]))) for layer in a for k in a[layer])


@pytest.fixture
def train_in_child(tmp_path, real_splits):
    """`train_in_child(runs) -> [(weights, {"rows", "test_loss", ...}), ...]`, one per run, trained
    in one child process with 8 forced CPU devices."""
    real_splits(val_size=0, train_limit=32)  # skip when the dataset is missing

    def train(runs):
        spec = tmp_path / "spec.json"
        spec.write_text(json.dumps({"devices": FORCED, "runs": runs}))
        done = subprocess.run([sys.executable, str(WORKER), str(spec), str(tmp_path)], env=child_env(FORCED),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-4000:]
        return [(load_weights(tmp_path / f"{i}.npz"), json.loads((tmp_path / f"{i}.json").read_text()))
                for i in range(len(runs))]
    return train


def assert_same_history(got: dict, one: dict, label: str) -> None:
    """Losses to LOSS_TOL; accuracies exactly (summed counts; a flip needs two logits within ~1e-6)."""
    assert len(got["rows"]) == len(one["rows"])
    for row, ref in zip(got["rows"], one["rows"]):
        for key in ("loss", "val_loss"):
            if key in ref:
                assert abs(row[key] - ref[key]) <= LOSS_TOL, (label, key, row[key], ref[key])
        for key in ("accuracy", "val_accuracy"):
            if key in ref:
                assert row[key] == ref[key], (label, key, row[key], ref[key])
    assert abs(got["test_loss"] - one["test_loss"]) <= LOSS_TOL, (label, got["test_loss"], one["test_loss"])
    assert got["test_accuracy"] == one["test_accuracy"], label


def test_mlp_after_10_and_100_steps_on_1_2_and_8_devices(train_in_child):
    runs = [{"impl": "handrolled", "model": "mlp", "devices": n, "train_limit": steps * 32, "val_size": 1000}
            for steps in (10, 100) for n in (1, 2, 8)]
    results = train_in_child(runs)
    for steps, (one, two, eight) in zip((10, 100), (results[:3], results[3:])):
        for n, got in ((2, two), (8, eight)):
            assert max_diff(got[0], one[0]) <= PARAM_TOL, (steps, n, max_diff(got[0], one[0]))
            assert_same_history(got[1], one[1], f"mlp {steps} steps, {n} devices")


def test_cnn_after_10_steps_on_1_2_and_8_devices(train_in_child):
    runs = [{"impl": "handrolled", "model": "cnn", "devices": n, "train_limit": 320, "val_size": 1000}
            for n in (1, 2, 8)]
    (one, two, eight) = train_in_child(runs)
    assert max_diff(two[0], one[0]) == 0  # the same two half-batch sums (PARAM_TOL's comment)
    assert max_diff(eight[0], one[0]) <= PARAM_TOL, max_diff(eight[0], one[0])
    for n, got in ((2, two), (8, eight)):
        assert_same_history(got[1], one[1], f"cnn 10 steps, {n} devices")


def test_a_partial_last_batch_split_or_replicated(train_in_child):
    """148 = 4 x 32 + 20 examples: the last batch of 20 is split over 2 devices, and computed whole
    on each of 8 (20 is not a multiple of 8); every example counts once in the epoch's metrics."""
    runs = [{"impl": "handrolled", "model": "mlp", "devices": n, "train_limit": 148, "val_size": 100, "epochs": 2}
            for n in (1, 2, 8)]
    (one, two, eight) = train_in_child(runs)
    assert one[1]["train_examples"] == 148
    for n, got in ((2, two), (8, eight)):
        assert max_diff(got[0], one[0]) <= PARAM_TOL, (n, max_diff(got[0], one[0]))
        assert_same_history(got[1], one[1], f"partial batch, {n} devices")
        for row in got[1]["rows"]:
            assert abs(row["accuracy"] * 148 - round(row["accuracy"] * 148)) < 1e-9  # a count of the 148


def test_flax_and_nnx_pass_devices_through_and_match_handrolled(train_in_child):
    """On one device the three JAX implementations train bit-identically (parity_tests); on 8 too,
    which shows each one's make_run_steps hands `config.devices` to the same fast path."""
    runs = [{"impl": impl, "model": model, "devices": 8, "train_limit": 320, "val_size": 0}
            for model in ("mlp", "cnn") for impl in ("handrolled", "flax", "nnx")]
    results = train_in_child(runs)
    for model, trio in zip(("mlp", "cnn"), (results[:3], results[3:])):
        hand = trio[0]
        for impl, got in zip(("flax", "nnx"), trio[1:]):
            assert max_diff(got[0], hand[0]) == 0, (model, impl)
            assert got[1]["rows"][0]["loss"] == hand[1]["rows"][0]["loss"], (model, impl)


MECHANISM = """
import json, numpy as np, jax, jax.numpy as jnp
from fmnist.fastpath.sharding import DataParallel
from fmnist.fastpath.steps import make_run_steps
dp = DataParallel(8)
def step(w, x, y):  # least squares, one SGD step; the loss a mean over the batch
    loss, g = jax.value_and_grad(lambda w: jnp.mean((x.reshape(len(x), -1) @ w - y) ** 2))(w)
    return w - 0.1 * g, loss, jnp.sum(y > 0)
sharded = jax.jit(lambda w, x, y: step(w, dp.rows(x), dp.rows(y)), out_shardings=dp.replicated)
w, x, y = dp.replicate(np.ones(4, np.float32)), dp.replicate(np.ones((32, 2, 2), np.float32)), dp.replicate(np.arange(32.0, dtype=np.float32))
hlo = sharded.lower(w, x, y).compile().as_text()
run = make_run_steps(step, np.ones((32, 2, 2), np.float32), np.arange(32.0, dtype=np.float32), scan=True, devices=8)
w_out, losses, corrects = run(np.ones(4, np.float32), np.arange(32).reshape(1, 32))
print(json.dumps({"all_reduce": "all-reduce" in hlo, "devices": len(w_out.sharding.device_set),
                  "replicated": w_out.sharding.is_fully_replicated, "loss": float(losses[0]),
                  "correct": int(corrects[0])}))
"""


def test_the_compiler_adds_the_all_reduce():
    """No hand-written psum: with the batch's rows split and the weights replicated, XLA's compiled
    step holds an all-reduce, and the state comes back replicated over the 8 devices."""
    done = subprocess.run([sys.executable, "-c", MECHANISM], env=child_env(FORCED), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    expected_loss = float(np.mean((4.0 - np.arange(32.0)) ** 2))  # w = 1: x @ w = 4 for every row
    assert got == {"all_reduce": True, "devices": 8, "replicated": True, "loss": expected_loss, "correct": 31}


def test_more_devices_than_jax_sees_says_how_to_get_cpu_devices(tmp_path):
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count=N"):
        check_devices(jax.device_count() + 1)
    # The command line refuses before it writes anything (this process has one device).
    out = tmp_path / "run"
    assert fmnist_main(["train", "--devices", str(jax.device_count() + 1), "--out", str(out)]) == 2
    assert not out.exists()


def test_configs_data_parallel_cannot_train():
    with pytest.raises(ValueError, match="must be a multiple of --devices 4"):
        TrainConfig(batch_size=30, devices=4)
    with pytest.raises(ValueError, match="fast path only"):
        TrainConfig(devices=2, fast=False)
    with pytest.raises(ValueError, match="at least 1"):
        TrainConfig(devices=0)
    with pytest.raises(ValueError, match="Keras trains on one device"):
        keras_rules.check(TrainConfig(devices=2))
    # Refused before jax.distributed starts: no --coordinator, no port, a process id out of range.
    assert fmnist_main(["train", "--process-id", "1", "--num-processes", "2"]) == 2
    assert fmnist_main(["train", "--coordinator", "localhost", "--num-processes", "2"]) == 2
    assert fmnist_main(["train", "--coordinator", "localhost:1", "--num-processes", "2", "--process-id", "2"]) == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def in_two_processes(args: list[str], outs: list[Path]) -> None:
    """`fmnist train ARGS` as processes 0 and 1 of a run on this machine, one CPU device each."""
    join = ["--coordinator", f"localhost:{free_port()}", "--num-processes", "2"]
    procs = [subprocess.Popen([*FMNIST_TRAIN, *args, *join, "--process-id", str(i), *out], env=child_env(None),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i, out in enumerate(outs)]
    try:
        outputs = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)


FMNIST_TRAIN = [sys.executable, "-m", "fmnist.app", "train"]


def test_two_processes_train_as_one_process_on_two_devices(tmp_path, real_splits):
    """`fmnist train --coordinator localhost:PORT --num-processes 2 --process-id I`, two local
    processes of one CPU device each (jax.distributed, gloo collectives): process 0 writes the run,
    process 1 nothing, also when both resume it (process 1 reads the checkpoint); the result is one
    process's on 2 devices exactly (2 partial sums add the same in either order), and one device's
    to PARAM_TOL."""
    splits = real_splits(val_size=100, train_limit=320)
    run = ["--impl", "handrolled", "--model", "mlp", "--train-limit", "320", "--val-size", "100", "--devices", "2"]
    run_dir = tmp_path / "p0"
    in_two_processes([*run, "--epochs", "1"], [["--out", str(run_dir)], ["--out", str(tmp_path / "p1")]])
    in_two_processes(["--resume", str(run_dir), "--epochs", "2"], [[], []])
    assert not (tmp_path / "p1").exists()  # only process 0 writes
    two_processes = load_weights(run_dir / "weights.npz")

    done = subprocess.run([*FMNIST_TRAIN, *run, "--epochs", "2", "--out", str(tmp_path / "one")],
                          env=child_env(2), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert max_diff(two_processes, load_weights(tmp_path / "one" / "weights.npz")) == 0

    config = TrainConfig(model="mlp", epochs=2, train_limit=320, val_size=100)  # here: one device
    single = runner.run("handrolled", config, splits, callbacks=[])
    assert max_diff(two_processes, single.weights) <= PARAM_TOL
    history = json.loads((run_dir / "history.json").read_text())
    assert_same_history({"rows": history["epochs"], "test_loss": history["test_loss"],
                         "test_accuracy": history["test_accuracy"]},
                        {"rows": single.epochs, "test_loss": single.test_loss,
                         "test_accuracy": single.test_accuracy}, "two processes")
