"""Convolution and max pooling (handrolled.conv) against plain NumPy float64 loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from handrolled import conv

# Jitted entry points: one XLA compile per shape instead of one per eager op (test speed only).
conv2d = jax.jit(conv.conv2d, static_argnums=(2, 3, 4))
conv2d_lax = jax.jit(conv.conv2d_lax, static_argnums=(2, 3))
conv2d_im2col = jax.jit(conv.conv2d_im2col, static_argnums=(2, 3))


# ----------------------------------------------------------------------------- NumPy references

def np_same_pads(n, k, s):
    # Written out again here (not imported) so the test does not trust the code it checks.
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def np_conv(x, w, stride, padding):
    """y[n,p,q,o] = sum_{i,j,c} xpad[n, p*sh+i, q*sw+j, c] w[i,j,c,o], one output pixel at a time."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    _, h, wd, _ = x.shape
    kh, kw, _, cout = w.shape
    sh, sw = stride
    (pt, pb), (pl, pr) = ((np_same_pads(h, kh, sh), np_same_pads(wd, kw, sw)) if padding == "SAME"
                          else ((0, 0), (0, 0)))
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    ho, wo = (h + pt + pb - kh) // sh + 1, (wd + pl + pr - kw) // sw + 1
    y = np.zeros((x.shape[0], ho, wo, cout))
    for p in range(ho):
        for q in range(wo):
            patch = xp[:, p * sh:p * sh + kh, q * sw:q * sw + kw, :]
            y[:, p, q, :] = np.tensordot(patch, w, axes=([1, 2, 3], [0, 1, 2]))
    return y


def np_max_pool(x, window, stride):
    """VALID max pooling, one output pixel at a time."""
    x = np.asarray(x)
    (kh, kw), (sh, sw) = window, stride
    ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    y = np.empty((x.shape[0], ho, wo, x.shape[3]), x.dtype)
    for p in range(ho):
        for q in range(wo):
            y[:, p, q, :] = x[:, p * sh:p * sh + kh, q * sw:q * sw + kw, :].max(axis=(1, 2))
    return y


# (H, W, kernel, stride, padding): odd and even sizes, even kernels (asymmetric SAME padding),
# strides 1 and 2, a non-square kernel and stride, and the CNN's own 28x28 3x3 SAME case.
CONV_CASES = [
    (5, 5, (3, 3), (1, 1), "SAME"),
    (6, 6, (3, 3), (2, 2), "SAME"),
    (7, 6, (3, 3), (2, 2), "SAME"),
    (6, 7, (2, 2), (1, 1), "SAME"),
    (8, 9, (4, 4), (2, 2), "SAME"),
    (7, 5, (3, 2), (2, 1), "SAME"),
    (5, 6, (3, 3), (1, 1), "VALID"),
    (7, 7, (3, 3), (2, 2), "VALID"),
    (6, 6, (2, 2), (2, 2), "VALID"),
    (28, 28, (3, 3), (1, 1), "SAME"),
]
# The cases the fast path's shift convolution computes (3x3, stride 1, SAME).
SHIFT_CASES = [c for c in CONV_CASES if c[2:] == ((3, 3), (1, 1), "SAME")]


def _conv_inputs(rng, h, w, kernel, cin=3, cout=4, n=2):
    x = rng.uniform(-1, 1, (n, h, w, cin)).astype(np.float32)
    k = rng.standard_normal((*kernel, cin, cout)).astype(np.float32)
    return x, k


# ----------------------------------------------------------------------------- padding

@pytest.mark.parametrize("n", range(1, 12))
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("s", [1, 2, 3])
def test_same_padding_matches_xla(n, k, s):
    # XLA's own 'SAME' rule, which Flax uses; Keras 'same' was measured identical to it.
    expected = jax.lax.padtype_to_pads((n,), (k,), (s,), "SAME")[0]
    assert conv.same_padding(n, k, s) == tuple(expected)
    assert conv.conv_output_size(n, k, s, "SAME") == -(-n // s)


def test_same_padding_puts_the_odd_row_after():
    assert conv.same_padding(28, 3, 1) == (1, 1)
    assert conv.same_padding(28, 2, 1) == (0, 1)   # total 1: nothing before, 1 after
    assert conv.same_padding(28, 4, 2) == (1, 1)
    assert conv.same_padding(7, 4, 1) == (1, 2)


def test_bad_padding_and_sizes_raise():
    with pytest.raises(ValueError, match="padding"):
        conv.check_padding("FULL")
    with pytest.raises(ValueError, match="kernel_size"):
        conv.pair(0, "kernel_size")
    with pytest.raises(ValueError, match="larger"):
        conv.im2col(jnp.zeros((1, 2, 2, 1)), 3, 1, "VALID")
    with pytest.raises(ValueError, match="impl"):
        conv.conv2d(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1)), impl="fft")


# ----------------------------------------------------------------------------- convolution

@pytest.mark.parametrize("impl, h,w,kernel,stride,padding",
                         [(i, *c) for i in ("lax", "im2col") for c in CONV_CASES] + [("shift", *c) for c in SHIFT_CASES])
def test_conv_matches_numpy_loop(rng, impl, h, w, kernel, stride, padding):
    x, k = _conv_inputs(rng, h, w, kernel)
    got = np.asarray(conv2d(jnp.asarray(x), jnp.asarray(k), stride, padding, impl))
    want = np_conv(x, k, stride, padding)
    assert got.shape == want.shape
    # float32 sums of <= 48 products, |y| up to ~18 (float32 ulp there: 1.9e-6); measured max
    # |error| 3.3e-6 over these cases. An off-by-one pad or a flipped kernel is off by O(1).
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("h,w,kernel,stride,padding", CONV_CASES)
def test_explicit_pads_equal_xla_same_string(rng, h, w, kernel, stride, padding):
    # Our explicit (before, after) pads must reproduce lax's own "SAME"/"VALID" handling bit for bit.
    x, k = _conv_inputs(rng, h, w, kernel)
    ours = conv.conv2d_lax(jnp.asarray(x), jnp.asarray(k), stride, padding)
    xla = jax.lax.conv_general_dilated(jnp.asarray(x), jnp.asarray(k), stride, padding,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(xla))


@pytest.mark.parametrize("h,w,kernel,stride,padding", CONV_CASES[:6])
def test_im2col_equals_lax_conv(rng, h, w, kernel, stride, padding):
    x, k = _conv_inputs(rng, h, w, kernel, cin=5, cout=6)
    x, k = jnp.asarray(x), jnp.asarray(k)
    lax_y = conv2d_lax(x, k, stride, padding)
    col_y = conv2d_im2col(x, k, stride, padding)
    # Same sum, possibly in a different order: float32 rounding only (measured max 3.8e-6 on
    # |y| up to 18, and 4.8e-6 on gradients up to 15).
    np.testing.assert_allclose(np.asarray(col_y), np.asarray(lax_y), rtol=1e-5, atol=1e-5)
    # ... and the same gradients (with respect to input and kernel).
    ct = jnp.asarray(rng.standard_normal(lax_y.shape).astype(np.float32))
    g_lax = jax.jit(jax.grad(lambda x, k: jnp.vdot(ct, conv.conv2d_lax(x, k, stride, padding)), (0, 1)))(x, k)
    g_col = jax.jit(jax.grad(lambda x, k: jnp.vdot(ct, conv.conv2d_im2col(x, k, stride, padding)), (0, 1)))(x, k)
    for a, b in zip(g_col, g_lax):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cin", [1, 3])
@pytest.mark.parametrize("h,w,kernel,stride,padding", SHIFT_CASES)
def test_shift_conv_equals_lax_conv_values_and_gradients(rng, cin, h, w, kernel, stride, padding):
    # The shifted-slices form with its custom VJP (kernel gradient as patches^T dy, input gradient
    # by differentiating the slices): the same sums as lax, float32 rounding apart.
    x, k = _conv_inputs(rng, h, w, kernel, cin=cin, cout=4)
    x, k = jnp.asarray(x), jnp.asarray(k)
    lax_y = conv2d_lax(x, k, stride, padding)
    np.testing.assert_allclose(np.asarray(conv.conv2d(x, k, stride, padding, "shift")), np.asarray(lax_y),
                               rtol=1e-5, atol=1e-5)
    ct = jnp.asarray(rng.standard_normal(lax_y.shape).astype(np.float32))
    grads = {impl: jax.jit(jax.grad(lambda x, k, impl=impl: jnp.vdot(ct, conv.conv2d(x, k, stride, padding, impl)),
                                    (0, 1)))(x, k) for impl in ("lax", "shift")}
    for a, b in zip(grads["shift"], grads["lax"]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_shift_conv_refuses_what_it_does_not_compute():
    x = jnp.zeros((1, 6, 6, 1))
    with pytest.raises(ValueError, match="stride 1 and SAME"):
        conv.conv2d(x, jnp.zeros((3, 3, 1, 2)), 2, "SAME", "shift")
    with pytest.raises(ValueError, match="stride 1 and SAME"):
        conv.conv2d(x, jnp.zeros((3, 3, 1, 2)), 1, "VALID", "shift")
    with pytest.raises(ValueError, match="kernel"):
        conv.conv2d(x, jnp.zeros((2, 2, 1, 2)), 1, "SAME", "shift")


def test_im2col_patch_layout(rng):
    # The last axis of im2col must run over (i, j, c) like an HWIO kernel reshaped to (kh*kw*C, O).
    x = jnp.asarray(rng.standard_normal((1, 4, 5, 2)).astype(np.float32))
    patches = np.asarray(conv.im2col(x, (3, 3), 1, "VALID"))
    assert patches.shape == (1, 2, 3, 18)
    xn = np.asarray(x)
    for p in range(2):
        for q in range(3):
            np.testing.assert_array_equal(patches[0, p, q], xn[0, p:p + 3, q:q + 3, :].reshape(-1))


@pytest.mark.parametrize("impl, h,w,kernel,stride,padding",
                         [(i, *CONV_CASES[c]) for i in ("lax", "im2col") for c in (0, 2, 3, 5, 7)]
                         + [("shift", *SHIFT_CASES[0])])
def test_conv_gradients_match_finite_differences(x64, fd_check, rng, impl, h, w, kernel, stride, padding):
    x, k = _conv_inputs(rng, h, w, kernel, cin=2, cout=3)
    x, k = x.astype(np.float64), k.astype(np.float64)
    ct = rng.standard_normal(np_conv(x, k, stride, padding).shape)
    f = lambda x, k: jnp.vdot(ct, conv.conv2d(x, k, stride, padding, impl))
    fd_check(f, (x, k), 0)
    fd_check(f, (x, k), 1)


# ----------------------------------------------------------------------------- max pooling

POOL_CASES = [  # (H, W, window, stride)
    (4, 4, (2, 2), (2, 2)),
    (5, 7, (2, 2), (2, 2)),   # odd sizes: the last row/column is dropped (VALID)
    (6, 6, (3, 3), (3, 3)),
    (6, 9, (2, 3), (2, 3)),
    (7, 7, (3, 3), (2, 2)),   # overlapping windows: reduce_window path
    (5, 5, (2, 2), (1, 1)),
    (28, 28, (2, 2), (2, 2)),
]


@pytest.mark.parametrize("h,w,window,stride", POOL_CASES)
def test_max_pool_matches_numpy_loop(rng, h, w, window, stride):
    x = rng.standard_normal((2, h, w, 3)).astype(np.float32)
    want = np_max_pool(x, window, stride)
    got = np.asarray(conv.max_pool2d(jnp.asarray(x), window, stride))
    np.testing.assert_array_equal(got, want)  # max is exact: no tolerance
    got_rw = np.asarray(conv.max_pool2d_reduce_window(jnp.asarray(x), window, stride))
    np.testing.assert_array_equal(got_rw, want)
    if window == stride:
        np.testing.assert_array_equal(np.asarray(conv.max_pool2d_reshape(jnp.asarray(x), window)), want)


def test_max_pool_reshape_needs_stride_equal_window():
    with pytest.raises(ValueError, match="stride == window"):
        conv.max_pool2d(jnp.zeros((1, 4, 4, 1)), 2, 1, impl="reshape")


@pytest.mark.parametrize("h,w", [(4, 4), (5, 7), (28, 28)])
def test_max_pool_reshape_gradient_equals_reduce_window_without_ties(rng, h, w):
    # Continuous random input has no ties, so both routes send each window's gradient to its
    # unique maximum: the gradients must be identical.
    x = jnp.asarray(rng.standard_normal((2, h, w, 3)).astype(np.float32))
    ct = jnp.asarray(rng.standard_normal((2, h // 2, w // 2, 3)).astype(np.float32))
    g_reshape = jax.grad(lambda x: jnp.vdot(ct, conv.max_pool2d_reshape(x, 2)))(x)
    g_window = jax.grad(lambda x: jnp.vdot(ct, conv.max_pool2d_reduce_window(x, 2, 2)))(x)
    np.testing.assert_array_equal(np.asarray(g_reshape), np.asarray(g_window))
    assert np.count_nonzero(np.asarray(g_reshape)) == ct.size  # one entry per window


def test_max_pool_gradient_at_ties_is_documented_behaviour():
    # A window of four equal values: reshape + max splits the gradient equally (jnp.max's rule),
    # reduce_window gives all of it to one element. Both total the incoming gradient.
    x = jnp.ones((1, 2, 2, 1))
    g_reshape = np.asarray(jax.grad(lambda x: conv.max_pool2d_reshape(x, 2).sum())(x))
    g_window = np.asarray(jax.grad(lambda x: conv.max_pool2d_reduce_window(x, 2, 2).sum())(x))
    np.testing.assert_array_equal(g_reshape.ravel(), [0.25] * 4)
    assert sorted(g_window.ravel()) == [0, 0, 0, 1]


@pytest.mark.parametrize("h,w,window,stride", [c for c in POOL_CASES if c[2] == c[3] == (2, 2) and c[0] % 2 == 0])
def test_first_max_pool_equals_reduce_window_values_and_gradients_even_at_ties(rng, h, w, window, stride):
    # Rounded inputs: many windows hold tied maxima. The first-max pool sends all of a window's
    # gradient to its first maximum (row-major), which is exactly what reduce_window's
    # select-and-scatter (and TF's MaxPool) does: values and gradients bit-identical.
    x = jnp.asarray(np.round(rng.standard_normal((2, h, w, 3)) * 1.5).astype(np.float32))
    ref_y = conv.max_pool2d_reduce_window(x, window, stride)
    np.testing.assert_array_equal(np.asarray(conv.max_pool2d(x, window, stride, "first_max")), np.asarray(ref_y))
    ct = jnp.asarray(rng.standard_normal(ref_y.shape).astype(np.float32))
    g = {impl: np.asarray(jax.grad(lambda x, impl=impl: jnp.vdot(ct, conv.max_pool2d(x, window, stride, impl)))(x))
         for impl in ("first_max", "reduce_window")}
    np.testing.assert_array_equal(g["first_max"], g["reduce_window"])
    assert np.count_nonzero(g["first_max"]) == ct.size  # one entry per window, ties or not


def test_first_max_pool_gradient_goes_to_the_first_of_tied_maxima():
    x = jnp.asarray([[[[1.0], [2.0]], [[2.0], [2.0]]]])  # (1, 2, 2, 1): max 2 at positions 1, 2, 3
    g = np.asarray(jax.grad(lambda x: conv.max_pool2d(x, 2, impl="first_max").sum())(x))
    np.testing.assert_array_equal(g.ravel(), [0, 1, 0, 0])


def test_first_max_pool_output_is_written_once_not_recomputed_by_its_consumers():
    # The pooled output passes an optimization barrier in the forward pass and in the saved forward
    # of the gradient (fmnist/fastpath/layers.py): without it jaxlib 0.12 fused the whole
    # conv-relu-pool chain into the next convolution's kernel gradient and recomputed it there
    # (docs/performance.md). Removing either barrier fails here.
    x = jnp.ones((1, 4, 4, 1))
    forward = jax.make_jaxpr(lambda x: conv.max_pool2d(x, 2, impl="first_max"))(x)
    backward = jax.make_jaxpr(jax.grad(lambda x: conv.max_pool2d(x, 2, impl="first_max").sum()))(x)
    assert "optimization_barrier" in str(forward) and "optimization_barrier" in str(backward)


@pytest.mark.parametrize("h,w,window,stride", [POOL_CASES[i] for i in (1, 3, 4)])
def test_max_pool_gradient_matches_finite_differences(x64, fd_check, rng, h, w, window, stride):
    x = rng.standard_normal((2, h, w, 2))  # float64, continuous: no ties, so max is smooth locally
    ct = rng.standard_normal(np_max_pool(x, window, stride).shape)
    fd_check(lambda x: jnp.vdot(ct, conv.max_pool2d(x, window, stride)), (x,), 0)
