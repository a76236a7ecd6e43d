"""Single layers and whole forward passes: the same weights and inputs in all three implementations.

Layers used: hand-rolled `Linear`/`Conv2D`/`MaxPool2D`/`Flatten` (handrolled.layers), Flax
`nn.Dense`/`nn.Conv`/`nn.max_pool` and the project's `flax_impl.models.max_pool_2x2`, Flax NNX
`nnx.Linear`/`nnx.Conv`/`nnx.max_pool` (the last is linen's function) and `nnx_impl.models`, Keras
`Dense`/`Conv2D`/`MaxPooling2D`/`Flatten` loaded with `set_weights`; the truth is the float64 NumPy
reference (float64_reference.py), which computes SAME padding from TensorFlow's documented rule.

Conv inputs are random (uniform [0, 1), 3 channels), not Fashion-MNIST images: real images are
black at the border, where a wrong padding split would be invisible.
"""

from __future__ import annotations

import functools
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import float64_reference as ref
from parity import (COMPARISONS, check, dense_problem, keras_modules, max_abs, max_abs_diff, needs_keras,
                    weights_with_biases)
from flax_impl import models as flax_models
from handrolled import layers as hl
from handrolled import models as hmodels
from nnx_impl import models as nnx_models

# --------------------------------------------------------------------------- Dense


@functools.cache
def dense_out(impl: str) -> np.ndarray:
    x, k, b = dense_problem()
    if impl == "float64":
        return ref.f64(x) @ ref.f64(k) + ref.f64(b)
    if impl == "handrolled":
        return np.asarray(hl.Linear.from_params(k, b)(jnp.asarray(x)))
    if impl == "flax":
        return np.asarray(nn.Dense(128).apply({"params": {"kernel": k, "bias": b}}, x))
    if impl == "nnx":
        layer = nnx.Linear(784, 128, rngs=nnx.Rngs(0))
        layer.kernel[...], layer.bias[...] = k, b
        return np.asarray(layer(x))
    K = keras_modules()
    layer = K.keras.layers.Dense(128)
    layer.build((None, 784))
    layer.set_weights([k, b])
    return np.asarray(layer(x))


@pytest.mark.parametrize("a, b", COMPARISONS)
def test_dense(a, b):
    diff = max_abs_diff(dense_out(a), dense_out(b))
    # |y| <= 3.3, each a 784-term float32 dot product whose terms' magnitudes sum to <= 18.7: the
    # statistical rounding bound sqrt(784) * 6e-8 * 18.7 is 3e-5. Measured: 2.4e-6 (JAX vs float64 and
    # JAX vs Keras), 1.7e-6 (Keras vs float64), 0 (hand-rolled vs Flax: the same XLA dot). Asserted
    # 8e-6, ~3x. A wrong weight layout or a dropped bias is off by O(0.1).
    check(f"Dense 784->128 {a} vs {b}", diff, 8e-6)


# --------------------------------------------------------------------------- Conv2D

# (kernel (kh, kw), stride, input (H, W)): odd and even kernels and inputs, so SAME padding is split
# evenly in some cases and unevenly (the extra row/column at the bottom/right) in others.
CONV_CASES = [
    ((3, 3), 1, (28, 28)),   # SAME pads 1/1
    ((3, 3), 2, (28, 28)),   # SAME pads 0/1: odd total with an odd kernel
    ((3, 3), 2, (27, 27)),   # SAME pads 1/1
    ((2, 2), 1, (28, 28)),   # SAME pads 0/1: even kernel
    ((2, 2), 2, (27, 27)),   # SAME pads 0/1
    ((4, 3), 1, (27, 26)),   # non-square kernel and image: SAME pads 1/2 rows, 1/1 cols
    ((4, 3), 2, (28, 27)),   # SAME pads 1/1 rows, 1/1 cols
    ((5, 5), 2, (28, 28)),   # SAME pads 1/2
]
CIN, COUT = 3, 5


def conv_id(case, padding):
    (kh, kw), s, (h, w) = case
    return f"{padding}-k{kh}x{kw}-s{s}-{h}x{w}"


CONV_PARAMS = [pytest.param(case, padding, id=conv_id(case, padding))
               for padding in ("SAME", "VALID") for case in CONV_CASES]


@functools.cache
def conv_inputs(case):
    (kh, kw), s, (h, w) = case
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    x = rng.random((4, h, w, CIN), dtype=np.float32)
    k = (rng.standard_normal((kh, kw, CIN, COUT)) * 0.3).astype(np.float32)
    b = rng.normal(0, 0.1, COUT).astype(np.float32)
    return x, k, b


@functools.cache
def conv_results(case, padding, impl):
    """(y, dx, dkernel, dbias) of y = conv(x) and of the scalar sum(y * r), r random per position."""
    (kh, kw), s, _ = case
    x, k, b = conv_inputs(case)
    if impl == "float64":
        y, cache = ref.conv2d(x, k, b, (s, s), padding)
        r = cotangent(case, y.shape)
        return (y, *ref.conv2d_backward(r, cache))
    if impl in ("handrolled", "flax", "nnx"):
        if impl == "flax":
            conv = nn.Conv(COUT, (kh, kw), strides=(s, s), padding=padding)
            fwd = lambda x, k, b: conv.apply({"params": {"kernel": k, "bias": b}}, x)  # noqa: E731
        elif impl == "nnx":
            graphdef = nnx.graphdef(nnx.Conv(CIN, COUT, (kh, kw), strides=(s, s), padding=padding,
                                             rngs=nnx.Rngs(0)))
            # a layer rebuilt around (k, b) on each call, so jax.grad sees them as inputs
            fwd = lambda x, k, b: nnx.merge(graphdef, {"kernel": k, "bias": b})(x)  # noqa: E731
        else:  # the default impl="lax", as the models use (im2col vs lax is a unit test)
            fwd = lambda x, k, b: hl.Conv2D.from_params(k, b, stride=s, padding=padding)(x)  # noqa: E731
        y = np.asarray(jax.jit(fwd)(x, k, b))
        r = cotangent(case, y.shape)
        grads = jax.jit(jax.grad(lambda x, k, b: jnp.sum(fwd(x, k, b) * r), argnums=(0, 1, 2)))(x, k, b)
        return (y, *(np.asarray(g) for g in grads))
    K = keras_modules()
    layer = K.keras.layers.Conv2D(COUT, (kh, kw), strides=s, padding=padding.lower())
    layer.build((None, *x.shape[1:]))
    layer.set_weights([k, b])
    xt = K.tf.constant(x)
    with K.tf.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt)
        r = cotangent(case, tuple(y.shape))
        loss = K.tf.reduce_sum(y * r)
    grads = tape.gradient(loss, [xt, layer.kernel, layer.bias])
    return (np.asarray(y), *(np.asarray(g) for g in grads))


def cotangent(case, shape):
    """A fixed random weight per output element, so the backward pass sees every position differently."""
    rng = np.random.default_rng(zlib.crc32(repr((case, shape)).encode()))
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("a, b", COMPARISONS)
@pytest.mark.parametrize("case, padding", CONV_PARAMS)
def test_conv2d(case, padding, a, b):
    """Output shape and values, and the gradients w.r.t. input, kernel and bias of sum(r * y)."""
    ya, *ga = conv_results(case, padding, a)
    yb, *gb = conv_results(case, padding, b)
    (kh, kw), s, (h, w) = case
    expect = (-(-h // s), -(-w // s)) if padding == "SAME" else ((h - kh) // s + 1, (w - kw) // s + 1)
    assert ya.shape[1:3] == yb.shape[1:3] == expect
    # Forward: sums of kh*kw*3 <= 75 products, |y| up to ~6. Measured over all 16 cases: 1.5e-6 (any
    # implementation vs float64), 0 between the three (XLA and oneDNN sum in the same order here).
    # Asserted 4e-6, ~3x. A wrong SAME split shifts whole rows of the output: O(0.1).
    check(f"Conv2D {conv_id(case, padding)} forward {a} vs {b}", max_abs_diff(ya, yb), 4e-6)
    # Backward, relative to the largest gradient: dkernel and dbias sum over up to 4*28*28 = 3136
    # positions (statistical bound sqrt(3136) * 6e-8 = 3.4e-6). Measured: 1.6e-6 (dbias, any pair),
    # 1.4e-6 (dkernel, JAX vs Keras), 1.1e-6 (dkernel, Keras vs float64); dx 3e-7. Asserted 5e-6 relative.
    for name, g1, g2 in zip(("dx", "dkernel", "dbias"), ga, gb):
        check(f"Conv2D {conv_id(case, padding)} {name} {a} vs {b} (relative to max|g|)",
              max_abs_diff(g1, g2) / max_abs(g2), 5e-6)


# --------------------------------------------------------------------------- MaxPool

# (window, stride, input (H, W)): tiling, an odd size whose last row VALID drops, overlapping windows.
POOL_CASES = [((2, 2), (2, 2), (28, 28)), ((2, 2), (2, 2), (27, 27)), ((3, 3), (2, 2), (28, 28)),
              ((2, 2), (1, 1), (14, 14))]


@functools.cache
def pool_out(window, stride, hw, impl):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, *hw, 3)).astype(np.float32)
    if impl == "float64":
        return ref.max_pool(x, window, stride)
    if impl == "handrolled":
        return np.asarray(hl.MaxPool2D(window, stride)(jnp.asarray(x)))
    if impl == "flax":
        return np.asarray(nn.max_pool(jnp.asarray(x), window, strides=stride, padding="VALID"))
    if impl == "nnx":
        return np.asarray(nnx.max_pool(jnp.asarray(x), window, strides=stride, padding="VALID"))
    K = keras_modules()
    return np.asarray(K.keras.layers.MaxPooling2D(window, strides=stride)(x))


@pytest.mark.parametrize("a, b", COMPARISONS)
@pytest.mark.parametrize("window, stride, hw", POOL_CASES, ids=lambda v: "x".join(map(str, v)))
def test_max_pool(window, stride, hw, a, b):
    # A max selects one of its inputs: no rounding anywhere, so the results must be bit-identical.
    check(f"MaxPool {window}/{stride} on {hw} {a} vs {b}", max_abs_diff(pool_out(window, stride, hw, a),
                                                                      pool_out(window, stride, hw, b)), 0.0)


def test_fast_pool_is_nn_max_pool_2x2():
    """The fast path's `max_pool_2x2` (the first-max pool) and the linen CNN's readable `max_pool`
    equal `nn.max_pool(x, (2,2), strides=(2,2))` and the float64 reference exactly."""
    from fmnist.fastpath.layers import max_pool_2x2

    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 28, 28, 8)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(flax_models.max_pool(jnp.asarray(x))), ref.max_pool(x, (2, 2)))
    fast = np.asarray(max_pool_2x2(jnp.asarray(x)))
    np.testing.assert_array_equal(fast, np.asarray(nn.max_pool(jnp.asarray(x), (2, 2), strides=(2, 2))))
    np.testing.assert_array_equal(fast, ref.max_pool(x, (2, 2)))


# --------------------------------------------------------------------------- Flatten


@pytest.mark.parametrize("impl", ["handrolled", pytest.param("keras", marks=needs_keras)])
def test_flatten_is_nhwc_row_major(impl):
    """(N, 7, 7, 64) -> (N, 3136) with index (h*7 + w)*64 + c, Keras's channels_last order. (Flax has
    no flatten layer: flax_impl.models flattens inline with `x.reshape((N, -1))`, which the CNN
    logits test below checks in place, where the order matters.)"""
    x = np.arange(2 * 7 * 7 * 64, dtype=np.float32).reshape(2, 7, 7, 64)
    if impl == "handrolled":
        out = np.asarray(hl.Flatten()(jnp.asarray(x)))
    else:
        out = np.asarray(keras_modules().keras.layers.Flatten()(x))
    np.testing.assert_array_equal(out, ref.flatten(x))  # a reshape copies values: exact
    assert out[0, (3 * 7 + 5) * 64 + 17] == x[0, 3, 5, 17]


# --------------------------------------------------------------------------- whole models

_KERAS_MODELS = {}


def keras_model(name):
    """One built Keras model per architecture, reused (weights are overwritten by each test)."""
    if name not in _KERAS_MODELS:
        _KERAS_MODELS[name] = keras_modules().models.build_model(name)
    return _KERAS_MODELS[name]


def model_logits(impl, name, weights, x):
    if impl == "float64":
        return ref.forward(weights, x)[0]
    if impl == "handrolled":
        return np.asarray(jax.jit(lambda m, x: m(x))(hmodels.from_weights(name, weights), x))
    if impl == "flax":
        return np.asarray(jax.jit(flax_models.build_model(name).apply)({"params": flax_models.from_weights(name, weights)}, x))
    if impl == "nnx":
        return np.asarray(jax.jit(lambda m, x: m(x))(nnx_models.from_weights(name, weights), x))
    K = keras_modules()
    model = keras_model(name)
    K.models.assign_weights(model, weights)
    return K.train.logits(model, x)


@pytest.fixture(scope="module")
def logits_of(weights, batch, model_name):
    cache = {}

    def get(impl):
        if impl not in cache:
            cache[impl] = model_logits(impl, model_name, weights, batch[0])
        return cache[impl]
    return get


@pytest.mark.parametrize("a, b", COMPARISONS)
def test_model_logits(model_name, logits_of, a, b):
    """Forward pass of the whole MLP / CNN on a real batch, from the same canonical weights: checks
    the weight copy (no transposes), SAME padding, 2x2/2 pooling and the NHWC flatten together."""
    # Measured: MLP 7.8e-7 (Keras vs float64), 7.2e-7 (JAX vs Keras), 6.6e-7 (JAX vs float64), 0
    # hand-rolled vs Flax (the same XLA ops); CNN 1.0e-6 (JAX vs Keras), 8.5e-7 (JAX vs float64),
    # 8.3e-7 (Keras vs float64), 5.4e-7 hand-rolled vs Flax (whose conv_0 sums shifted slices).
    # Asserted 3e-6, ~3x. A transposed conv kernel or an NCHW flatten moves logits by O(1)
    # (see test_nchw_flatten_would_be_caught).
    check(f"{model_name} logits {a} vs {b}", max_abs_diff(logits_of(a), logits_of(b)), 3e-6)


def test_nchw_flatten_would_be_caught(batch):
    """Flattening the CNN's (N, 7, 7, 64) features channel-first (PyTorch's order) with the same
    dense_0 kernel changes the logits by O(1), far above the 3e-6 the logits test allows."""
    weights = ref._w(weights_with_biases("cnn"))
    _, acts = ref.forward(weights, batch[0])
    feats = acts["flat"].reshape(acts["pre_flatten_shape"])
    nchw = feats.transpose(0, 3, 1, 2).reshape(len(feats), -1)
    logits = lambda flat: ref.relu(flat @ weights["dense_0"]["kernel"] + weights["dense_0"]["bias"]) \
        @ weights["dense_1"]["kernel"] + weights["dense_1"]["bias"]  # noqa: E731
    assert max_abs_diff(logits(nchw), logits(acts["flat"])) > 0.1


