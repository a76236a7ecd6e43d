"""Runs inside a child process started by test_sharding.py, with forced CPU devices in its
environment (XLA_FLAGS=--xla_force_host_platform_device_count=8, set before JAX starts: a process
cannot change its device count once JAX is up, so the test process keeps its own single device).

    python sharding_worker.py SPEC.json OUT_DIR

SPEC.json: {"devices": expected jax.device_count(), "runs": [{"impl", "model", "devices",
"train_limit", "val_size", "seed", "epochs"}, ...]}. Each run trains through `fmnist.app.runner.run`
(so the implementation's own `make_run_steps(config, ...)`, the shared loop, validation and the
test set) on real Fashion-MNIST, batch 32, and writes OUT_DIR/<i>.npz (canonical weights) and
OUT_DIR/<i>.json (the history rows and the test metrics).
"""

import json
import sys
from pathlib import Path

import jax

from fmnist.app import runner
from fmnist.config import TrainConfig
from fmnist.data import load_splits
from fmnist.weights import save_weights


def main(spec_path: str, out: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    assert jax.device_count() == spec["devices"], (jax.device_count(), jax.devices())
    splits = {}
    for i, run in enumerate(spec["runs"]):
        key = (run["train_limit"], run["val_size"])
        if key not in splits:
            splits[key] = load_splits(val_size=run["val_size"], train_limit=run["train_limit"], test_limit=200)
        config = TrainConfig(model=run["model"], epochs=run.get("epochs", 1), batch_size=32,
                             val_size=run["val_size"], train_limit=run["train_limit"],
                             seed=run.get("seed", 0), devices=run["devices"])
        result = runner.run(run["impl"], config, splits[key], callbacks=[])
        save_weights(Path(out) / f"{i}.npz", result.weights)
        (Path(out) / f"{i}.json").write_text(json.dumps(
            {"rows": result.epochs, "test_loss": result.test_loss, "test_accuracy": result.test_accuracy,
             "train_examples": int(len(splits[key].x_train))}))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
