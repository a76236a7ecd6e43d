"""The NNX modules: canonical names and shapes, weight round trip, logits equal to the linen modules'."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.shared import random_images
from fmnist.weights import KERNEL_SHAPES, init_weights
from flax_impl import models as linen_models
from flax_impl.fast_layers import fast_layers as linen_fast_layers
from nnx_impl.fast_layers import ShiftConv, fast_layers
from nnx_impl.models import build_model, from_weights, to_weights

MODELS = ("mlp", "cnn")





def weights_with_biases(name, rng, init="he_normal", seed=1):
    weights = init_weights(name, init, seed)
    for p in weights.values():  # nonzero biases, so a dropped or misplaced bias shows
        p["bias"] = rng.normal(0, 0.1, p["bias"].shape).astype(np.float32)
    return weights


@pytest.mark.parametrize("name", MODELS)
def test_build_model_creates_exactly_the_canonical_layers(name):
    """The model's `nnx.Param`s (shapes only, built under `nnx.eval_shape`) are the layers and kernel
    shapes of fmnist.weights, under the canonical names."""
    abstract = nnx.eval_shape(lambda: build_model(name))
    params = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
    got = {layer: (p["kernel"].shape, p["bias"].shape) for layer, p in params.items()}
    assert got == {layer: (shape, shape[-1:]) for layer, shape in KERNEL_SHAPES[name].items()}


@pytest.mark.parametrize("name", MODELS)
def test_forward_gives_float32_logits_per_example(name, rng):
    model = from_weights(name, init_weights(name))
    for n in (1, 5):
        logits = model(random_images(rng, n))
        assert logits.shape == (n, 10) and logits.dtype == jnp.float32


@pytest.mark.parametrize("name", MODELS)
def test_weights_round_trip_is_bit_exact(name):
    weights = init_weights(name, "glorot_uniform", seed=3)
    model = from_weights(name, weights)
    assert all(isinstance(v, jax.Array) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    back = to_weights(model)
    assert list(back) == list(weights)  # canonical layer order
    for layer in weights:
        assert list(back[layer]) == ["kernel", "bias"]
        for k in ("kernel", "bias"):
            assert back[layer][k].dtype == np.float32
            np.testing.assert_array_equal(back[layer][k], weights[layer][k])
    # copies both ways: writing to either side leaves the other alone
    back["dense_1"]["bias"][:] = 7.0
    weights["dense_1"]["bias"][:] = 9.0
    np.testing.assert_array_equal(np.asarray(model.dense_1.bias[...]), np.zeros(10, np.float32))


def test_to_weights_accepts_a_state_of_params(rng):
    """Gradients come back from `nnx.value_and_grad` as an `nnx.State`; `to_weights` reads those too."""
    model = from_weights("mlp", weights_with_biases("mlp", rng))
    grads = nnx.jit(nnx.grad(lambda m, x: jnp.sum(m(x))))(model, random_images(rng, 2))
    assert isinstance(grads, nnx.State)
    g = to_weights(grads)
    assert list(g) == ["dense_0", "dense_1"]
    np.testing.assert_array_equal(g["dense_1"]["bias"], np.full(10, 2.0, np.float32))  # d sum / d b = N


def test_bad_names_and_shapes_are_rejected():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet")
    weights = init_weights("mlp")
    weights["dense_0"]["kernel"] = weights["dense_0"]["kernel"][:100]
    with pytest.raises(ValueError, match="dense_0"):
        from_weights("mlp", weights)
    with pytest.raises(ValueError, match="must have layers"):
        from_weights("cnn", init_weights("mlp"))


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("name", MODELS)
def test_logits_equal_the_linen_modules_bit_for_bit(name, fast, rng):
    """The same weights in the NNX and the linen module give the same logits to the bit: the same
    operations (nnx.Linear/nnx.Conv build what nn.Dense/nn.Conv build; conv_0 and the pools are the
    very same functions), on the readable and on the fast layers. The linen modules are checked
    against float64 NumPy in tests/flax_impl."""
    weights = weights_with_biases(name, rng)
    x = random_images(rng, 64)
    layers = {"nnx": fast_layers(name), "linen": linen_fast_layers(name)} if fast else {"nnx": {}, "linen": {}}
    got = np.asarray(jax.jit(lambda m, x: m(x))(from_weights(name, weights, **layers["nnx"]), x))
    want = np.asarray(jax.jit(linen_models.build_model(name, **layers["linen"]).apply)(
        {"params": linen_models.from_weights(name, weights)}, x))
    np.testing.assert_array_equal(got, want)


def test_shift_conv_equals_nnx_conv_values_and_gradients(rng):
    """`ShiftConv` (conv_0 of the CNN) is nnx.Conv(1, F, (3, 3), padding="SAME") computed as shifted
    slices: the same parameters, values and gradients, float32 rounding apart."""
    x = jnp.asarray(rng.random((2, 28, 28, 1)), jnp.float32)
    ours = ShiftConv(1, 8, rngs=nnx.Rngs(0))
    ref = nnx.Conv(1, 8, kernel_size=(3, 3), padding="SAME", rngs=nnx.Rngs(1))
    assert ours.kernel[...].shape == ref.kernel[...].shape == (3, 3, 1, 8)
    ours.kernel[...] = jnp.asarray(rng.standard_normal((3, 3, 1, 8)), jnp.float32)
    ours.bias[...] = jnp.asarray(rng.standard_normal(8), jnp.float32)
    nnx.update(ref, nnx.state(ours))  # the same parameters, by name
    # 9 products and a bias per output, |y| up to 9.5: measured 9.5e-7 apart (1 ulp at 8; another
    # summation order); 1e-5 is float32 rounding with room. A shifted or flipped kernel is off by O(1).
    np.testing.assert_allclose(ours(x), ref(x), rtol=0, atol=1e-5)
    ct = jnp.asarray(rng.standard_normal((2, 28, 28, 8)), jnp.float32)
    grad = lambda m: nnx.jit(nnx.grad(lambda m: jnp.sum(m(x) * ct)))(m)  # noqa: E731
    for a, b in zip(jax.tree.leaves(grad(ours)), jax.tree.leaves(grad(ref))):
        # sums over 2*28*28 = 1568 positions: measured 1.7e-6 of max|g| (kernel), 0 (bias)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(b))))
