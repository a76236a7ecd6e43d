"""Keras models: architecture, canonical weights in and out, logits and gradients against NumPy float64."""

import importlib.util

import numpy as np
import pytest

if not all(importlib.util.find_spec(m) for m in ("tensorflow", "keras")):
    pytest.skip("Keras/TensorFlow not installed (pip install -c constraints.txt -e '.[keras]')",
                allow_module_level=True)

from numpy.lib.stride_tricks import sliding_window_view  # noqa: E402

from fmnist.config import TrainConfig  # noqa: E402
from fmnist.weights import KERNEL_SHAPES, init_weights  # noqa: E402
from keras_baseline import models, train  # noqa: E402

MODELS = ("mlp", "cnn")


# --------------------------------------------------------------------------- NumPy float64 references

def reference_logits(w, x):
    """The canonical architectures in float64 NumPy: SAME 3x3 convs, 2x2/2 max pools, NHWC flatten."""
    x = x.astype(np.float64)
    if "conv_0" in w:
        for name in ("conv_0", "conv_1"):
            padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # SAME for a 3x3 kernel, stride 1
            windows = sliding_window_view(padded, (3, 3), axis=(1, 2))  # (N, H, W, C, 3, 3)
            x = np.einsum("nhwcij,ijco->nhwo", windows, w[name]["kernel"].astype(np.float64))
            x = np.maximum(x + w[name]["bias"], 0)
            n, h, wd, c = x.shape
            x = x.reshape(n, h // 2, 2, wd // 2, 2, c).max(axis=(2, 4))
    x = x.reshape(len(x), -1)
    h = np.maximum(x @ w["dense_0"]["kernel"].astype(np.float64) + w["dense_0"]["bias"], 0)
    return h @ w["dense_1"]["kernel"].astype(np.float64) + w["dense_1"]["bias"]


def reference_loss(z, y):
    """Mean cross-entropy of logits z (float64, max subtracted for stability)."""
    z = z - z.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))


def reference_mlp_grads(w, x, y):
    """Backpropagation through the MLP by hand, float64."""
    n = len(x)
    x = x.reshape(n, -1).astype(np.float64)
    w0, b0, w1, b1 = (w[l][p].astype(np.float64) for l in ("dense_0", "dense_1") for p in ("kernel", "bias"))
    z1 = x @ w0 + b0
    h = np.maximum(z1, 0)
    z2 = h @ w1 + b1
    p = np.exp(z2 - z2.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    d2 = p.copy()
    d2[np.arange(n), y] -= 1
    d2 /= n  # the loss is a mean over the batch
    d1 = (d2 @ w1.T) * (z1 > 0)
    return {"dense_0": {"kernel": x.T @ d1, "bias": d1.sum(0)},
            "dense_1": {"kernel": h.T @ d2, "bias": d2.sum(0)}}


def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(a[l][p], np.float64) - b[l][p]))) for l in a for p in a[l])


# --------------------------------------------------------------------------- tests

@pytest.mark.parametrize("name", MODELS)
def test_architecture_matches_canonical_shapes(name):
    model = models.build_model(name)
    assert model.input_shape == (None, 28, 28, 1)
    assert model.output_shape == (None, 10)
    shapes = {layer.name: tuple(layer.kernel.shape) for layer in model.layers if layer.weights}
    assert list(shapes.items()) == list(KERNEL_SHAPES[name].items())  # names, shapes and order


@pytest.mark.parametrize("name", MODELS)
def test_weights_round_trip_bit_exact(name):
    weights = init_weights(name, "he_normal", seed=3)
    model = models.from_weights(name, weights)
    assert model.name == name and not model.compiled
    back = models.to_weights(model)
    assert list(back) == list(weights)
    for layer in weights:
        for p in ("kernel", "bias"):
            assert back[layer][p].dtype == np.float32
            np.testing.assert_array_equal(back[layer][p], weights[layer][p])


def test_from_weights_rejects_the_wrong_model():
    with pytest.raises(ValueError, match="must have layers"):
        models.from_weights("mlp", init_weights("cnn"))
    with pytest.raises(ValueError, match="must have layers"):
        models.assign_weights(models.build_model("mlp"), init_weights("cnn"))


def test_assign_weights_overwrites_a_compiled_model_in_place():
    """The parity tests' reuse of one compiled model: new weights in, the same model object."""
    model = train.compiled_model(TrainConfig(model="mlp"), init_weights("mlp", seed=0))
    other = init_weights("mlp", seed=1)
    models.assign_weights(model, other)
    assert model.compiled
    for layer, params in models.to_weights(model).items():
        for p in ("kernel", "bias"):
            np.testing.assert_array_equal(params[p], other[layer][p])


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("seed", [0, 1])
def test_logits_match_float64_reference(name, seed, batch):
    x, _ = batch
    weights = init_weights(name, "he_normal", seed)
    model = models.from_weights(name, weights)
    # float32 sums of up to 3136 products (max |logit| about 4.5): measured max error 1.0e-6 (MLP)
    # and 2.0e-6 (CNN) over seeds 0-2; 1e-5 leaves 5x headroom and still catches any real mistake
    # (a wrong padding, pooling or flatten order changes logits by O(0.1)).
    np.testing.assert_allclose(train.logits(model, x), reference_logits(weights, x), rtol=0, atol=1e-5)


def test_mlp_loss_and_grads_match_float64_backprop(batch):
    x, y = batch[0][:32], batch[1][:32]
    weights = init_weights("mlp", "he_normal", seed=0)
    model = models.from_weights("mlp", weights)
    loss, grads = train.loss_and_grads(model, x, y)
    # measured: loss 1.9e-7, gradients 8.7e-8 (max |g| 0.36), seeds 0-2: float32 rounding.
    assert loss == pytest.approx(reference_loss(reference_logits(weights, x), y), abs=5e-6)
    assert list(grads) == list(weights)
    assert max_diff(grads, reference_mlp_grads(weights, x, y)) < 1e-6


@pytest.mark.parametrize("name", MODELS)
def test_tape_grads_are_what_fit_steps_with(name, batch):
    """One SGD step with lr=1 moves each weight by exactly its gradient (up to the rounding of p - g)."""
    x, y = batch[0][:32], batch[1][:32]
    weights = init_weights(name, "he_normal", seed=1)
    model = models.from_weights(name, weights)
    loss, grads = train.loss_and_grads(model, x, y)
    stepped = train.compiled_model(TrainConfig(model=name, optimizer="sgd", lr=1.0), weights)
    (step_loss,) = train.train_steps(stepped, [(x, y)])
    after = models.to_weights(stepped)
    moved = {l: {p: weights[l][p].astype(np.float64) - after[l][p] for p in weights[l]} for l in weights}
    # The tape (eager) and fit's step (tf.function) compute the same gradient with possibly different
    # kernels, and p - g rounds to ulp(|p|) (|p| < 2, ulp 2.4e-7). Measured worst: 3e-8 (MLP),
    # 5.4e-7 (CNN) over seeds 0-2.
    assert max_diff(grads, moved) < 2e-6
    assert step_loss == pytest.approx(loss, abs=1e-6)  # same forward pass, measured equal to float32
