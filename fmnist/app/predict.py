"""Logits of canonical weights in any implementation, on the same fixed-size batches
(`predict_logits`), for `fmnist evaluate` (`fmnist.app.evaluate`).

Each implementation's readable model is built from the weights and run forward, jitted as its own
`evaluate` compiles it; Keras on JAX computes in a child process (Keras fixes its backend at import).
"""

from __future__ import annotations

import numpy as np

from fmnist.config import IMPLEMENTATIONS
from fmnist.data import CLASS_NAMES
from fmnist.weights import Weights, check_weights

BATCH_SIZE = 1000                           # every implementation sees the same batches (see `predict_logits`)


def check_impl(impl: str, flag: str = "--impl") -> None:
    """ValueError unless `impl` is a known implementation whose packages are installed (`flag`: the
    option the message names)."""
    from fmnist.app.runner import NEEDS, installed_impls

    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {impl!r}; choose one of {', '.join(IMPLEMENTATIONS)}")
    if impl not in installed_impls():
        raise ValueError(f"{flag} {impl}: {impl} is not installed here (it needs {', '.join(NEEDS[impl])}); install "
                         "the project with `pip install -c constraints.txt -e '.[keras,test]'` (what `make` does)")


def _batches(x: np.ndarray, batch_size: int):
    """`x` in batches of exactly `batch_size` (the last zero-padded), with each batch's true length.

    One shape, so each JAX forward compiles once; and every implementation sees the same batches,
    because XLA's CPU kernels may round a row differently in a batch of another size.
    """
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        n = len(xb)
        if n < batch_size:
            xb = np.concatenate([xb, np.zeros((batch_size - n, *xb.shape[1:]), xb.dtype)])
        yield xb, n


def _jax_logits(forward, params, x: np.ndarray, batch_size: int) -> np.ndarray:
    import jax

    jitted = jax.jit(forward)  # as the implementations' own `evaluate` compiles
    return np.concatenate([np.asarray(jitted(params, xb), np.float32)[:n] for xb, n in _batches(x, batch_size)])


def _handrolled_logits(model_name, weights, x, batch_size):
    from handrolled.models import from_weights

    # The hand-rolled Sequential is a pytree: its arrays are the jitted function's arguments.
    return _jax_logits(lambda model, xb: model(xb), from_weights(model_name, weights), x, batch_size)


def _flax_logits(model_name, weights, x, batch_size):
    from flax_impl.models import build_model, from_weights

    apply = build_model(model_name).apply
    return _jax_logits(lambda params, xb: apply({"params": params}, xb), from_weights(model_name, weights), x,
                       batch_size)


def _nnx_logits(model_name, weights, x, batch_size):
    from flax import nnx

    from nnx_impl.models import from_weights

    # split/merge as nnx_impl.train's evaluate does: the state is the argument, the graph is static.
    graphdef, state = nnx.split(from_weights(model_name, weights))
    return _jax_logits(lambda state, xb: nnx.merge(graphdef, state)(xb), state, x, batch_size)


def _keras_logits(model_name, weights, x, batch_size):
    from keras_baseline.models import from_weights
    from keras_baseline.train import logits

    model = from_weights(model_name, weights)
    return np.concatenate([logits(model, xb, batch_size)[:n] for xb, n in _batches(x, batch_size)])


def _keras_jax_logits(model_name, weights, x, batch_size):
    from keras_baseline import jax_parity

    # Keras fixes its backend at import, so keras-jax computes in a child process: the parity
    # worker's "logits" item is `keras_baseline.train.logits` on the JAX backend.
    padded = np.concatenate([xb for xb, _ in _batches(x, batch_size)])
    results = jax_parity.run_parity([{"name": "logits", "kind": "logits", "model": model_name,
                                      "weights": "w", "x": "x"}], {"x": padded}, {"w": weights})
    return np.asarray(results["logits"]["logits"], np.float32)[:len(x)]


_LOGITS = {"handrolled": _handrolled_logits, "flax": _flax_logits, "nnx": _nnx_logits,
           "keras": _keras_logits, "keras-jax": _keras_jax_logits}


def predict_logits(impl: str, model_name: str, weights: Weights, x: np.ndarray,
                   batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Logits, float32 (N, 10), of `model_name` holding canonical `weights` on images `x`, computed by `impl`.

    Each implementation's modules are imported here, so TensorFlow is imported only for "keras".
    """
    check_impl(impl)
    check_weights(model_name, weights)
    try:
        out = _LOGITS[impl](model_name, weights, np.asarray(x, np.float32), batch_size)
    except ImportError as e:
        raise ValueError(f"--impl {impl} needs {e.name or 'a package'} ({e})") from None
    return np.asarray(out, np.float32).reshape(len(x), len(CLASS_NAMES))
