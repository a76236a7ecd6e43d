"""Fixtures of the parity suite: precision pinning, real data, canonical weights, the float64 reference.

Precision. Every comparison here assumes true float32 arithmetic. On Ampere-or-newer GPUs both JAX
and TensorFlow run float32 matmuls and convolutions in TF32 by default (10-bit mantissa, errors
~1e-3), which would break every tolerance below for reasons that have nothing to do with the
implementations. So JAX's default matmul precision is pinned to "highest" (true float32) here, and
TF32 is switched off in TensorFlow as soon as it is imported (`parity.keras_modules`). On this
project's CPU-only machine both settings change no number: they are harmless here and matter on GPUs.

Sizes are chosen for a 2-core CPU: batches of 64, and 4000 training examples for the epoch test.
"""

from __future__ import annotations

import jax
import pytest

import float64_reference as ref
import parity

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_addoption(parser):
    parser.addoption("--parity-report", action="store_true", default=False,
                     help="print every parity check's measured max |diff| and its tolerance")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not config.getoption("--parity-report", default=False) or not parity.RESULTS:
        return
    terminalreporter.section("parity: measured max |diff| vs tolerance")
    for what, measured, tolerance in parity.RESULTS:
        terminalreporter.write_line(f"{measured:10.3g}  {tolerance:10.3g}  {what}")


@pytest.fixture(scope="session")
def splits(real_splits):
    """Real Fashion-MNIST, preprocessed once in NumPy: 4000 training, 1000 validation, 1000 test examples."""
    return real_splits(val_size=1000, train_limit=4000, test_limit=1000)


@pytest.fixture(scope="session")
def batch(splits):
    """One real batch: the first 64 training images (float32 NHWC in [0, 1]) and int32 labels."""
    return splits.x_train[:64], splits.y_train[:64]


@pytest.fixture(scope="session", params=["mlp", "cnn"])
def model_name(request):
    return request.param


@pytest.fixture(scope="session")
def weights(model_name):
    """Canonical float32 weights (biases non-zero) of the model under test."""
    return parity.weights_with_biases(model_name)


@pytest.fixture(scope="session")
def reference_loss_and_grads(weights, batch):
    """(loss, grads) of the mean cross-entropy on `batch`, by float64 backprop in NumPy."""
    return ref.loss_and_grads(weights, *batch)
