"""Pytree layers: forward against NumPy float64, gradients against finite differences, pytree mechanics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmnist import initializers
from handrolled import relu
from handrolled.layers import Conv2D, Flatten, Function, Linear, MaxPool2D, Sequential


def leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


# ----------------------------------------------------------------------------- Linear

def test_linear_init_uses_fmnist_initializers():
    layer = Linear(784, 128, seed=5)
    want = initializers.he_normal(np.random.default_rng(5), (784, 128))
    np.testing.assert_array_equal(np.asarray(layer.w), want)  # bit for bit: same NumPy draw
    assert layer.w.dtype == jnp.float32 and layer.b.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(layer.b), np.zeros(128, np.float32))
    glorot = Linear(784, 128, init="glorot_uniform", seed=5)
    np.testing.assert_array_equal(np.asarray(glorot.w),
                                  initializers.glorot_uniform(np.random.default_rng(5), (784, 128)))
    assert not np.array_equal(np.asarray(Linear(784, 128, seed=6).w), np.asarray(layer.w))
    with pytest.raises(ValueError, match="initialiser"):
        Linear(3, 2, init="orthogonal")


def test_linear_forward_matches_numpy(rng):
    w = rng.standard_normal((20, 7)).astype(np.float32)
    b = rng.standard_normal(7).astype(np.float32)
    x = rng.standard_normal((5, 20)).astype(np.float32)
    layer = Linear.from_params(w, b)
    assert (layer.ni, layer.no) == (20, 7)
    want = x.astype(np.float64) @ w.astype(np.float64) + b
    # float32 dot of 20 N(0,1)*N(0,1) terms, |y| up to ~10: measured max 1.3e-6 over 20 seeds.
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="features"):
        layer(jnp.zeros((5, 21)))
    with pytest.raises(ValueError, match="bias"):
        Linear.from_params(w, b[:3])


def test_linear_gradients_match_finite_differences(x64, fd_check, rng):
    w, b, x = rng.standard_normal((6, 4)), rng.standard_normal(4), rng.standard_normal((3, 6))
    ct = rng.standard_normal((3, 4))
    f = lambda x, w, b: jnp.vdot(ct, Linear.from_params(w, b)(x))
    for argnum in range(3):
        fd_check(f, (x, w, b), argnum)


# ----------------------------------------------------------------------------- Conv2D and pooling

def test_conv2d_init_and_shapes():
    layer = Conv2D(1, 32, 3, seed=7)
    assert layer.w.shape == (3, 3, 1, 32) and layer.b.shape == (32,)
    np.testing.assert_array_equal(np.asarray(layer.w),
                                  initializers.he_normal(np.random.default_rng(7), (3, 3, 1, 32)))
    x = jnp.zeros((2, 28, 28, 1))
    assert layer(x).shape == (2, 28, 28, 32)
    assert Conv2D(1, 4, 3, padding="valid")(x).shape == (2, 26, 26, 4)
    assert Conv2D(1, 4, 3, stride=2)(x).shape == (2, 14, 14, 4)
    assert Conv2D(1, 4, (3, 2), stride=(2, 1), padding="VALID")(x).shape == (2, 13, 27, 4)
    with pytest.raises(ValueError, match="channels"):
        layer(jnp.zeros((2, 28, 28, 3)))
    with pytest.raises(ValueError, match="padding"):
        Conv2D(1, 4, padding="FULL")
    with pytest.raises(ValueError, match="impl"):
        Conv2D(1, 4, impl="winograd")
    with pytest.raises(ValueError, match="kernel_size"):
        Conv2D(1, 4, kernel_size=0)


@pytest.mark.parametrize("impl", ["lax", "im2col"])
def test_conv2d_layer_adds_bias_and_matches_numpy(rng, impl):
    w = rng.standard_normal((3, 3, 2, 4)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    x = rng.standard_normal((2, 5, 6, 2)).astype(np.float32)
    got = np.asarray(Conv2D.from_params(w, b, stride=2, padding="SAME", impl=impl)(jnp.asarray(x)))
    # Direct float64 loop; SAME for 5x6, k=3, s=2: output 3x3, pads (1,1) and (0,1).
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (0, 1), (0, 0)))
    want = np.zeros((2, 3, 3, 4))
    for p in range(3):
        for q in range(3):
            want[:, p, q] = np.tensordot(xp[:, 2 * p:2 * p + 3, 2 * q:2 * q + 3], w, 3) + b
    # float32 sums of 18 products of N(0,1) terms: measured max 1.8e-6 over 20 seeds.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_maxpool_and_flatten_layers(rng):
    x = jnp.asarray(rng.standard_normal((2, 7, 7, 3)).astype(np.float32))
    y = MaxPool2D()(x)
    assert y.shape == (2, 3, 3, 3)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x)[:, :6, :6].reshape(2, 3, 2, 3, 2, 3).max((2, 4)))
    assert MaxPool2D(3, 2)(x).shape == (2, 3, 3, 3)
    np.testing.assert_array_equal(np.asarray(MaxPool2D(2, impl="reduce_window")(x)), np.asarray(y))
    assert Flatten()(x).shape == (2, 147)
    with pytest.raises(ValueError, match="impl"):
        MaxPool2D(2, impl="avg")
    with pytest.raises(ValueError, match="stride == window"):
        MaxPool2D(3, 2, impl="reshape")


# ----------------------------------------------------------------------------- Sequential, Function

def test_sequential_lifts_plain_callables():
    seq = Sequential(Flatten(), Linear(4, 3), relu, Linear(3, 2), lambda x: 2 * x)
    assert [type(layer).__name__ for layer in seq] == ["Flatten", "Linear", "Function", "Linear", "Function"]
    assert repr(seq[2]) == "Function(relu)"
    assert len(seq) == 5 and seq(jnp.ones((3, 2, 2))).shape == (3, 2)
    with pytest.raises(TypeError, match="callables"):
        Sequential(Linear(4, 3), 42)


def test_pytree_flatten_unflatten_round_trip():
    seq = Sequential(Conv2D(1, 2, 3, seed=1), relu, MaxPool2D(), Flatten(), Linear(2 * 2 * 2, 3, seed=2))
    leaves, treedef = jax.tree.flatten(seq)
    # Only the arrays are leaves: conv w, b and linear w, b, in layer order.
    assert [leaf.shape for leaf in leaves] == [(3, 3, 1, 2), (2,), (8, 3), (3,)]
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert type(rebuilt) is Sequential and repr(rebuilt) == repr(seq)
    assert all(a is b for a, b in zip(jax.tree.leaves(rebuilt), leaves))
    assert jax.tree.structure(rebuilt) == treedef
    x = jnp.ones((1, 4, 4, 1))
    np.testing.assert_array_equal(np.asarray(rebuilt(x)), np.asarray(seq(x)))
    doubled = jax.tree.map(lambda a: 2 * a, seq)
    assert type(doubled) is Sequential and type(doubled[0]) is Conv2D
    np.testing.assert_array_equal(np.asarray(doubled[4].w), 2 * np.asarray(seq[4].w))


def test_jit_and_grad_through_a_model_without_retracing(rng):
    traces = []

    @jax.jit
    def loss(model, x):
        traces.append(1)  # runs only while tracing
        return jnp.sum(model(x) ** 2)

    make = lambda seed: Sequential(Conv2D(1, 2, 3, seed=seed), relu, MaxPool2D(), Flatten(), Linear(8, 3, seed=seed))
    x = jnp.asarray(rng.standard_normal((2, 4, 4, 1)).astype(np.float32))
    m1, m2 = make(1), make(2)
    eager = float(jnp.sum(m1(x) ** 2))
    # float32: jit may fuse differently from eager; relative rounding only.
    np.testing.assert_allclose(float(loss(m1, x)), eager, rtol=1e-6)
    loss(m2, x)
    assert len(traces) == 1  # same architecture = same static aux data = one compilation
    grads = jax.grad(loss)(m1, x)
    assert jax.tree.structure(grads) == jax.tree.structure(m1)
    assert all(g.shape == p.shape for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(m1)))


def test_small_cnn_gradients_match_finite_differences(x64, fd_check, rng):
    # End to end through every layer type, in float64: conv (both impls), relu, pool, flatten, linear.
    w0, b0 = rng.standard_normal((3, 3, 1, 3)), rng.standard_normal(3)
    w1, b1 = rng.standard_normal((12, 4)), rng.standard_normal(4)
    x = rng.standard_normal((2, 5, 4, 1))
    ct = rng.standard_normal((2, 4))

    def f(impl):
        def loss(w0, b0, w1, b1):
            model = Sequential(Conv2D.from_params(w0, b0, impl=impl), relu, MaxPool2D(), Flatten(),
                               Linear.from_params(w1, b1))
            return jnp.vdot(ct, model(x))
        return loss

    for impl in ("lax", "im2col"):
        for argnum in range(4):
            fd_check(f(impl), (w0, b0, w1, b1), argnum)
