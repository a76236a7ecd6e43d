"""Loss and gradient of every parameter, MLP and CNN, on one real batch, from the same weights.

Each implementation uses the loss its training step differentiates:
  hand-rolled: `handrolled.train.loss_and_grads` (sparse_cross_entropy_with_logits, jax.value_and_grad)
  Flax:        `flax_impl.train.loss_and_correct` (optax integer-label cross-entropy) via jax.value_and_grad
  NNX:         `nnx_impl.train.loss_and_grads` (the same loss on the NNX module, nnx.value_and_grad)
  (all on the readable models: lax convolutions, reshape / nn.max_pool pools)
  Keras:       `keras_baseline.train.loss_and_grads` (SparseCategoricalCrossentropy(from_logits=True), GradientTape)
  float64:     hand-written backprop in NumPy (float64_reference.loss_and_grads)
Gradients are compared in the canonical layout (fmnist.weights), so a transposed kernel or a
permuted flatten shows up as a wrong gradient for that layer.
"""

from __future__ import annotations

import jax
import pytest
from flax import nnx

from parity import COMPARISONS, check, keras_modules, max_abs, max_abs_diff
from flax_impl import models as flax_models
from flax_impl import train as flax_train
from handrolled import models as hmodels
from handrolled import train as htrain
from nnx_impl import models as nnx_models
from nnx_impl import train as nnx_train

_KERAS_MODELS = {}


def loss_and_grads(impl, model_name, weights, x, y, reference):
    if impl == "float64":
        return reference
    if impl == "handrolled":
        (loss, _), grads = jax.jit(htrain.loss_and_grads)(hmodels.from_weights(model_name, weights), x, y)
        return float(loss), hmodels.to_weights(grads)
    if impl == "flax":
        apply_fn = flax_models.build_model(model_name).apply
        f = jax.jit(jax.value_and_grad(lambda p, x, y: flax_train.loss_and_correct(p, apply_fn, x, y), has_aux=True))
        (loss, _), grads = f(flax_models.from_weights(model_name, weights), x, y)
        return float(loss), flax_models.to_weights(grads)
    if impl == "nnx":
        (loss, _), grads = nnx.jit(nnx_train.loss_and_grads)(nnx_models.from_weights(model_name, weights), x, y)
        return float(loss), nnx_models.to_weights(grads)
    K = keras_modules()
    if model_name not in _KERAS_MODELS:
        _KERAS_MODELS[model_name] = K.models.build_model(model_name)
    model = _KERAS_MODELS[model_name]
    K.models.assign_weights(model, weights)
    return K.train.loss_and_grads(model, x, y)


@pytest.fixture(scope="module")
def results(model_name, weights, batch, reference_loss_and_grads):
    cache = {}

    def get(impl):
        if impl not in cache:
            cache[impl] = loss_and_grads(impl, model_name, weights, *batch, reference_loss_and_grads)
        return cache[impl]
    return get


# Loss (~2.5 on this batch; ulp(2.5) = 2.4e-7): measured 2.4e-7 (JAX vs Keras, MLP and CNN).
LOSS_TOL = 1e-6       # 4 ulps of the loss.
# Gradients, as max |diff| / max |g| per tensor (max |g| 0.05-0.27): the bias of conv_0 sums 64*28*28
# = 50176 terms, dense_0's kernel 64. Measured: MLP 3.6e-7 (dense_1/kernel, float64 vs JAX), CNN
# 1.07e-6 (conv_0/kernel, JAX vs Keras), 1.0e-6 (conv_0/kernel, Keras vs float64), 8.1e-7
# (conv_0/bias, JAX vs Keras). Asserted 3e-6 relative, ~3x. A transposed kernel or a flipped
# flatten gives O(1) relative errors.
GRAD_REL_TOL = 3e-6


@pytest.mark.parametrize("a, b", COMPARISONS)
def test_loss_on_one_batch(model_name, results, a, b):
    check(f"{model_name} batch loss {a} vs {b}", abs(results(a)[0] - results(b)[0]), LOSS_TOL)


@pytest.mark.parametrize("a, b", COMPARISONS)
def test_gradients_of_every_parameter(model_name, results, a, b):
    ga, gb = results(a)[1], results(b)[1]
    assert list(ga) == list(gb), (list(ga), list(gb))  # the same layers, in the canonical order
    for layer in ga:
        for kind in ("kernel", "bias"):
            scale = max_abs(gb[layer][kind])
            assert scale > 1e-3, f"{layer}/{kind}: a (near) zero gradient proves nothing"
            check(f"{model_name} d loss / d {layer}/{kind} {a} vs {b} (relative to max|g| = {scale:.2g})",
                  max_abs_diff(ga[layer][kind], gb[layer][kind]) / scale, GRAD_REL_TOL)
