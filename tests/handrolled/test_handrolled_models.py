"""The mlp and cnn architectures, and conversion to and from canonical weights (fmnist.weights)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmnist import weights as fw
from tests.shared import numpy_logits, random_weights
from handrolled import models
from handrolled.layers import Conv2D, Flatten, Function, Linear, MaxPool2D


# ----------------------------------------------------------------------------- float64 reference

@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).random((4, 28, 28, 1), dtype=np.float32)


# ----------------------------------------------------------------------------- architecture

def test_layer_sequences():
    kinds = lambda m: [type(layer).__name__ if not isinstance(layer, Function) else layer.fn.__name__
                       for layer in m]
    assert kinds(models.mlp()) == ["Flatten", "Linear", "relu", "Linear"]
    assert kinds(models.cnn()) == ["Conv2D", "relu", "MaxPool2D", "Conv2D", "relu", "MaxPool2D",
                                   "Flatten", "Linear", "relu", "Linear"]
    cnn = models.cnn()
    assert all(c.padding == "SAME" and c.stride == (1, 1) for c in cnn if isinstance(c, Conv2D))
    assert all(p.window == (2, 2) and p.stride == (2, 2) for p in cnn if isinstance(p, MaxPool2D))


@pytest.mark.parametrize("name", fw.MODEL_NAMES)
def test_kernel_shapes_match_fmnist_weights(name, images):
    w = models.to_weights(models.build_model(name))
    assert list(w) == list(fw.KERNEL_SHAPES[name])
    assert {k: v["kernel"].shape for k, v in w.items()} == fw.KERNEL_SHAPES[name]
    out = models.build_model(name)(jnp.asarray(images))
    assert out.shape == (4, 10) and out.dtype == jnp.float32


@pytest.mark.parametrize("name", fw.MODEL_NAMES)
def test_build_model_is_from_weights_of_init_weights(name):
    for init, seed in [("he_normal", 0), ("glorot_uniform", 3)]:
        got = models.to_weights(models.build_model(name, init, seed))
        want = fw.init_weights(name, init, seed)
        for layer in want:
            for k in ("kernel", "bias"):
                np.testing.assert_array_equal(got[layer][k], want[layer][k])
    default = models.mlp() if name == "mlp" else models.cnn()
    np.testing.assert_array_equal(models.to_weights(default)["dense_0"]["kernel"],
                                  fw.init_weights(name)["dense_0"]["kernel"])
    assert not np.array_equal(models.to_weights(models.build_model(name, seed=1))["dense_0"]["kernel"],
                              fw.init_weights(name)["dense_0"]["kernel"])


@pytest.mark.parametrize("name", fw.MODEL_NAMES)
def test_forward_matches_float64_numpy(name, images):
    weights = random_weights(name)
    want = numpy_logits(weights, images)
    for conv_impl in ("lax", "im2col"):
        for pool_impl in ("reshape", "reduce_window"):
            got = models.from_weights(name, weights, conv_impl, pool_impl)(jnp.asarray(images))
            # Returns logits (no softmax). float32 error against float64: measured max 1.7e-6 (cnn,
            # logits up to 3.1) and 5.3e-7 (mlp, up to 1.8); docs/parity-semantics.md §5 suggests 1e-5.
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_conv_and_pool_impls_give_the_same_gradients(images):
    weights = random_weights("cnn")
    x, y = jnp.asarray(images), jnp.array([0, 3, 7, 9])

    def loss(model):
        z = model(x)
        return jnp.mean(jax.nn.logsumexp(z, axis=-1) - z[jnp.arange(4), y])

    grads = {impls: models.to_weights(jax.jit(jax.grad(loss))(models.from_weights("cnn", weights, *impls)))
             for impls in [("lax", "reshape"), ("im2col", "reshape"), ("lax", "reduce_window")]}
    grads["fast"] = models.to_weights(jax.jit(jax.grad(loss))(models.from_weights("cnn", weights, fast=True)))
    ref = grads["lax", "reshape"]
    for impls, g in grads.items():
        # Random images: no ties in the pools, so only float32 summation order differs
        # (measured: im2col 4.2e-7, reduce_window 0.0, the fast layers 2.4e-7, on gradients up to 1.1).
        assert fw.max_abs_diff(g, ref) < 1e-6, impls


# ----------------------------------------------------------------------------- weights round trip

def _bits(weights):
    return {(l, k): np.asarray(v).view(np.uint32) for l, p in weights.items() for k, v in p.items()}


@pytest.mark.parametrize("name", fw.MODEL_NAMES)
def test_weights_round_trip_is_bit_exact(name):
    weights = random_weights(name, seed=4)
    # Awkward values must survive too: -0.0, subnormals, huge and tiny magnitudes.
    weights["dense_1"]["kernel"][0, :5] = np.float32([-0.0, 1e-45, -3e-39, 3.4e38, -1e-30])
    model = models.from_weights(name, weights)
    back = models.to_weights(model)
    assert list(back) == list(weights)
    assert all(v.dtype == np.float32 and isinstance(v, np.ndarray) for p in back.values() for v in p.values())
    b0, b1 = _bits(weights), _bits(back)
    assert b0.keys() == b1.keys() and all(np.array_equal(b0[k], b1[k]) for k in b0)
    # And model -> weights -> model keeps every leaf bit for bit.
    again = models.from_weights(name, back)
    for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(again)):
        np.testing.assert_array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))
    # to_weights copies: changing the NumPy result must not change the model.
    back["dense_1"]["bias"][0] = 123.0
    assert float(model[-1].b[0]) != 123.0


def test_from_weights_and_to_weights_reject_mismatches():
    w = fw.init_weights("mlp")
    with pytest.raises(ValueError, match="unknown model"):
        models.from_weights("resnet", w)
    with pytest.raises(ValueError, match="layers"):
        models.from_weights("cnn", w)
    bad = {k: dict(v) for k, v in w.items()}
    bad["dense_0"]["kernel"] = bad["dense_0"]["kernel"][:, :64]
    with pytest.raises(ValueError, match="dense_0"):
        models.from_weights("mlp", bad)
    from handrolled.layers import Sequential
    with pytest.raises(ValueError, match="match no model"):
        models.to_weights(Sequential(Flatten(), Linear(784, 10)))
