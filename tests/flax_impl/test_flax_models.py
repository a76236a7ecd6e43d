"""The linen modules: canonical names and shapes, weight round trip, logits against NumPy float64."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import freeze

from fmnist.weights import KERNEL_SHAPES, init_weights
from tests.shared import numpy_logits, random_images
from fmnist.fastpath.layers import max_pool_2x2
from flax_impl.models import build_model, from_weights, to_weights

MODELS = ("mlp", "cnn")


@pytest.mark.parametrize("name", MODELS)
def test_init_builds_exactly_the_canonical_layers(name):
    """`model.init` (shapes only, no compute) creates the layers and kernel shapes of fmnist.weights."""
    shapes = jax.eval_shape(build_model(name).init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    got = {layer: (p["kernel"].shape, p["bias"].shape) for layer, p in shapes["params"].items()}
    assert got == {layer: (shape, shape[-1:]) for layer, shape in KERNEL_SHAPES[name].items()}


@pytest.mark.parametrize("name", MODELS)
def test_forward_gives_float32_logits_per_example(name, rng):
    params = from_weights(name, init_weights(name))
    for n in (1, 5):
        logits = build_model(name).apply({"params": params}, random_images(rng, n))
        assert logits.shape == (n, 10) and logits.dtype == jnp.float32


@pytest.mark.parametrize("name", MODELS)
def test_weights_round_trip_is_bit_exact(name):
    weights = init_weights(name, "glorot_uniform", seed=3)
    params = from_weights(name, weights)
    assert all(isinstance(p[k], jax.Array) for p in params.values() for k in p)
    back = to_weights(params)
    assert list(back) == list(weights)  # canonical layer order
    for layer in weights:
        assert list(back[layer]) == ["kernel", "bias"]
        for k in ("kernel", "bias"):
            assert back[layer][k].dtype == np.float32
            np.testing.assert_array_equal(back[layer][k], weights[layer][k])


def test_to_weights_accepts_any_key_order_and_frozendict():
    weights = init_weights("cnn")
    shuffled = dict(reversed(list(from_weights("cnn", weights).items())))
    for params in (shuffled, freeze(shuffled)):
        assert list(to_weights(params)) == ["conv_0", "conv_1", "dense_0", "dense_1"]


def test_bad_names_and_shapes_are_rejected():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet")
    with pytest.raises(ValueError, match="match no model"):
        to_weights({"Dense_0": {}, "Dense_1": {}})
    weights = init_weights("mlp")
    weights["dense_0"]["kernel"] = weights["dense_0"]["kernel"][:100]
    with pytest.raises(ValueError, match="dense_0"):
        from_weights("mlp", weights)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("init", ["he_normal", "glorot_uniform"])
def test_logits_match_numpy_float64_reference(name, init, rng):
    weights = init_weights(name, init, seed=1)
    for p in weights.values():  # nonzero biases, so a dropped or misplaced bias shows
        p["bias"] = rng.normal(0, 0.1, p["bias"].shape).astype(np.float32)
    x = random_images(rng, 64)
    want = numpy_logits(weights, x)
    got = np.asarray(jax.jit(build_model(name).apply)({"params": from_weights(name, weights)}, x))
    # float32 dot products over fan_in up to 3136 terms: measured worst |error| / max|logit| was
    # 6.5e-7 (MLP) and 7.5e-7 (CNN) over 3 seeds x 2 initialisers x random and real images.
    # 1e-5 relative is 13x that; a wrong layout, padding, pool or flatten order is off by O(1).
    scale = max(1.0, float(np.max(np.abs(want))))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)


def test_fast_pool_equals_nn_max_pool_values_and_gradients(rng):
    """The first-max pool is `nn.max_pool(x, (2,2), strides=(2,2))`: forward and gradients exactly."""
    x = jnp.asarray(rng.standard_normal((4, 28, 28, 8)), jnp.float32)  # continuous: no ties
    idiomatic = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))  # noqa: E731
    np.testing.assert_array_equal(max_pool_2x2(x), idiomatic(x))
    ct = jnp.asarray(rng.standard_normal((4, 14, 14, 8)), jnp.float32)
    grad = lambda pool: jax.grad(lambda x: jnp.sum(pool(x) * ct))(x)  # noqa: E731
    np.testing.assert_array_equal(grad(max_pool_2x2), grad(idiomatic))
    # ... also at ties (rounded inputs): both send a window's gradient to its first maximum
    xt = jnp.round(x * 1.5)
    gt = lambda pool: jax.grad(lambda x: jnp.sum(pool(x) * ct))(xt)  # noqa: E731
    np.testing.assert_array_equal(gt(max_pool_2x2), gt(idiomatic))
    assert np.count_nonzero(np.asarray(gt(max_pool_2x2))) == ct.size
    # nn.max_pool's easy-to-miss default is stride 1, which would give 27x27, not 14x14
    assert nn.max_pool(x, (2, 2)).shape == (4, 27, 27, 8)


def test_shift_conv_equals_nn_conv_values_and_gradients(rng):
    """`ShiftConv` (conv_0 of the CNN) is nn.Conv(F, (3, 3), padding="SAME") computed as shifted
    slices: the same parameters, values and gradients, float32 rounding apart."""
    from flax_impl.fast_layers import ShiftConv

    for cin in (1, 3):
        x = jnp.asarray(rng.random((4, 28, 28, cin)), jnp.float32)
        params = {"kernel": jnp.asarray(rng.standard_normal((3, 3, cin, 8)), jnp.float32),
                  "bias": jnp.asarray(rng.standard_normal(8), jnp.float32)}
        ours = lambda p, x: ShiftConv(8).apply({"params": p}, x)  # noqa: E731
        ref = lambda p, x: nn.Conv(8, (3, 3), padding="SAME").apply({"params": p}, x)  # noqa: E731
        assert jax.eval_shape(ShiftConv(8).init, jax.random.key(0), x)["params"]["kernel"].shape == (3, 3, cin, 8)
        np.testing.assert_allclose(ours(params, x), ref(params, x), rtol=1e-5, atol=1e-5)
        ct = jnp.asarray(rng.standard_normal((4, 28, 28, 8)), jnp.float32)
        grad = lambda f: jax.jit(jax.grad(lambda p, x: jnp.sum(f(p, x) * ct), (0, 1)))(params, x)  # noqa: E731
        for a, b in zip(jax.tree.leaves(grad(ours)), jax.tree.leaves(grad(ref))):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))
