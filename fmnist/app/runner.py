"""Runs any implementation through one entry point, importing only what that implementation needs.

Each implementation's training module exposes the same two functions:

    check(config: TrainConfig) -> None     (ValueError if it cannot run `config`)
    train_and_evaluate(config: TrainConfig, splits: Splits, initial_weights: Weights,
                       callbacks=(), checkpoint_dir=None) -> RunResult

so the command line, `fmnist compare` and the tests never special-case one of them. TensorFlow is
imported only when `impl == "keras"` (it costs seconds at start-up and is absent on some machines).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

from fmnist.config import IMPLEMENTATIONS, TrainConfig
from fmnist.data import Splits, load_splits
from fmnist.history import RunResult
from fmnist.weights import Weights, init_weights

TRAIN_MODULES = {"handrolled": "handrolled.train", "flax": "flax_impl.train", "nnx": "nnx_impl.train",
                 "keras": "keras_baseline.train", "keras-jax": "keras_baseline.jax_backend"}


def train_module(impl: str):
    """The training module of implementation `impl` (`check`, `train_and_evaluate`, ...)."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {impl!r}; choose one of {', '.join(IMPLEMENTATIONS)}")
    try:
        return importlib.import_module(TRAIN_MODULES[impl])
    except ImportError as e:
        raise ValueError(f"--impl {impl} needs {e.name or 'a package'} ({e}); install the project with "
                         "`pip install -c constraints.txt -e '.[keras,test]'` (what `make` does)") from None


def get_trainer(impl: str):
    """The `train_and_evaluate` function of implementation `impl`."""
    return train_module(impl).train_and_evaluate


# The packages each implementation imports (what `installed_impls` looks for).
NEEDS = {"handrolled": ["jax"], "flax": ["jax", "flax", "optax"], "nnx": ["jax", "flax", "optax"],
         "keras": ["keras", "tensorflow"], "keras-jax": ["keras", "jax"]}


def installed_impls() -> list[str]:
    """The implementations whose packages are installed, in the canonical order (nothing imported)."""
    return [impl for impl in IMPLEMENTATIONS if all(importlib.util.find_spec(m) for m in NEEDS[impl])]


def preflight(impls, config: TrainConfig) -> None:
    """Raise ValueError now if any of `impls` cannot run `config` (missing package, unsupported option)."""
    for impl in impls:  # each implementation says what it cannot run (Keras: only the epsilon-hat Adam)
        train_module(impl).check(config)
    joined = "jax" in sys.modules and sys.modules["jax"].distributed.is_initialized()  # several processes
    if config.devices > 1 or joined:  # enough devices, all of them? (before a run directory is written)
        from fmnist.fastpath.sharding import check_devices

        check_devices(config.devices)


def splits_for(config: TrainConfig) -> Splits:
    """The preprocessed data `config` trains on."""
    return load_splits(val_size=config.val_size, split_seed=config.split_seed, train_limit=config.train_limit)


def run(impl: str, config: TrainConfig, splits: Splits | None = None,
        initial_weights: Weights | None = None, callbacks=None, checkpoint_dir=None) -> RunResult:
    """Train `impl` with `config` from the canonical weights of (`config.init`, `config.seed`).

    With `checkpoint_dir`, the run resumes from the last epoch saved there and saves every epoch.
    """
    preflight([impl], config)
    trainer = get_trainer(impl)
    if splits is None:
        splits = splits_for(config)
    if initial_weights is None:
        initial_weights = init_weights(config.model, config.init, config.seed)
    if callbacks is None:
        from fmnist.callbacks import ProgressBar
        callbacks = [ProgressBar()]
    return trainer(config, splits, initial_weights, callbacks=callbacks, checkpoint_dir=checkpoint_dir)
