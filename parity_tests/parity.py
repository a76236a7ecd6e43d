"""Helpers shared by the parity tests: which comparisons to make, how to measure, how to assert.

Every parity assertion goes through `check(what, measured, tolerance)`, which records the measured
value; `pytest parity_tests --parity-report` prints all of them at the end of the run (that table is
where the numbers in README.md come from).
"""

from __future__ import annotations

import functools
import itertools
import types

import numpy as np
import pytest

IMPLS = ("handrolled", "flax", "nnx", "keras")
REFERENCE = "float64"

HAVE_TF = True
try:  # cheap probe, so parametrisation can mark Keras cases without importing TensorFlow
    import importlib.util

    HAVE_TF = importlib.util.find_spec("tensorflow") is not None
except Exception:  # pragma: no cover
    HAVE_TF = False

needs_keras = pytest.mark.skipif(not HAVE_TF, reason="TensorFlow is not installed: Keras parity checks skipped")


def _param(a: str, b: str):
    marks = [needs_keras] if "keras" in (a, b) else []
    return pytest.param(a, b, id=f"{a}-vs-{b}", marks=marks)


# Each implementation against the float64 reference, then every pair of implementations.
COMPARISONS = [_param(impl, REFERENCE) for impl in IMPLS] + [_param(a, b) for a, b in itertools.combinations(IMPLS, 2)]
# Only the implementations against each other (where there is no separate float64 truth).
PAIRS = [_param(a, b) for a, b in itertools.combinations(IMPLS, 2)]
# Each implementation on its own (e.g. "gives exactly this value").
SINGLE = [pytest.param(i, id=i, marks=[needs_keras] if i == "keras" else []) for i in IMPLS]


_KERAS = None


def keras_modules() -> types.SimpleNamespace:
    """keras, tf, keras_baseline.models and keras_baseline.train, imported once; skips without TF.

    TF32 is switched off for float32 matmuls and convolutions as soon as TensorFlow is imported:
    on Ampere-or-newer GPUs TF would otherwise run them with 10-bit mantissas (errors ~1e-3, far
    above every tolerance here). On this CPU-only machine the setting changes nothing.
    """
    global _KERAS
    if _KERAS is None:
        pytest.importorskip("tensorflow", reason="TensorFlow is not installed: Keras parity checks skipped")
        from keras_baseline import models, train  # sets KERAS_BACKEND=tensorflow before importing keras
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(False)
        _KERAS = types.SimpleNamespace(keras=models.keras, tf=tf, models=models, train=train)
    return _KERAS


def max_abs_diff(a, b) -> float:
    """Largest |a - b| in float64, over arrays or over nested dicts of arrays with the same keys."""
    if isinstance(a, dict):
        assert set(a) == set(b), (sorted(a), sorted(b))
        return max(max_abs_diff(a[k], b[k]) for k in a)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.size == 0:
        return 0.0
    both_inf = np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b))
    diff = np.abs(np.where(both_inf, 0.0, a - b))
    return float(np.nanmax(np.where(np.isnan(a) & np.isnan(b), 0.0, np.where(np.isnan(diff), np.inf, diff))))


def max_abs(a) -> float:
    if isinstance(a, dict):
        return max(max_abs(v) for v in a.values())
    return float(np.max(np.abs(np.asarray(a, np.float64))))


RESULTS: list[tuple[str, float, float]] = []


def check(what: str, measured: float, tolerance: float) -> None:
    """Assert measured <= tolerance, and record both for the --parity-report table."""
    RESULTS.append((what, float(measured), float(tolerance)))
    assert measured <= tolerance, f"{what}: max |diff| = {measured:.3g} exceeds the tolerance {tolerance:.3g}"


def record(what: str, measured: float) -> None:
    """Record a measured value that is reported but deliberately not asserted (see the caller)."""
    RESULTS.append((what, float(measured), float("nan")))


def weights_with_biases(model: str, seed: int = 1):
    """Canonical He-normal weights (fmnist.weights.init_weights) with random non-zero biases N(0, 0.1).

    Zero biases (the training start) would let a parity test miss a bias that is dropped, added
    twice or broadcast over the wrong axis; these weights are for the forward and gradient checks.
    """
    from fmnist.weights import init_weights

    weights = init_weights(model, "he_normal", seed)
    rng = np.random.default_rng(seed + 100)
    for p in weights.values():
        p["bias"] = rng.normal(0.0, 0.1, p["bias"].shape).astype(np.float32)
    return weights


# --------------------------------------------------------------------------- problems several files use

@functools.cache
def dense_problem():
    """The MLP's first layer (784 -> 128, He-normal kernel, random bias) on 64 random [0, 1) inputs."""
    rng = np.random.default_rng(10)
    x = rng.random((64, 784), dtype=np.float32)
    k = (rng.standard_normal((784, 128)) * np.sqrt(2 / 784)).astype(np.float32)
    b = rng.normal(0, 0.1, 128).astype(np.float32)
    return x, k, b


@functools.cache
def optimizer_problem(steps: int = 100):
    """Parameters ~N(0, 0.1) and `steps` gradients in three regimes: |g| ~ 1e-2 ("a"), tiny
    |g| ~ 1e-6 where Adam's epsilon matters ("b"), and 1e-3 with 30% exact zeros ("c")."""
    rng = np.random.default_rng(0)
    params = {"a": rng.normal(0, 0.1, (64, 32)), "b": rng.normal(0, 0.1, 32), "c": rng.normal(0, 0.1, 50)}
    params = {k: v.astype(np.float32) for k, v in params.items()}
    grads = []
    for _ in range(steps):
        c = rng.normal(0, 1e-3, 50)
        c[rng.random(50) < 0.3] = 0.0
        g = {"a": rng.normal(0, 1e-2, (64, 32)), "b": rng.normal(0, 1e-6, 32), "c": c}
        grads.append({k: v.astype(np.float32) for k, v in g.items()})
    return params, grads
