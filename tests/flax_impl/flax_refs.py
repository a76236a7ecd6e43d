"""NumPy float64 references for the Flax tests (a module, not conftest, so the name is unique)."""

import numpy as np


def numpy_conv_same(x, kernel, bias):
    """3x3 SAME convolution on NHWC in float64: y[n,i,j,o] = b[o] + sum_{a,b,c} xpad[n,i+a,j+b,c] K[a,b,c,o]."""
    kh, kw = kernel.shape[:2]
    ph, pw = (kh - 1) // 2, (kw - 1) // 2  # SAME for odd kernels: the same padding on both sides
    xp = np.pad(x, ((0, 0), (ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)))
    h, w = x.shape[1:3]
    y = np.zeros(x.shape[:3] + (kernel.shape[-1],))
    for a in range(kh):
        for b in range(kw):
            y += xp[:, a:a + h, b:b + w, :] @ kernel[a, b]
    return y + bias


def numpy_logits(weights, x):
    """The MLP or CNN forward pass in float64 NumPy, straight from canonical weights."""
    w = {layer: {k: np.asarray(v, np.float64) for k, v in p.items()} for layer, p in weights.items()}
    x = np.asarray(x, np.float64)
    relu = lambda z: np.maximum(z, 0.0)  # noqa: E731
    if "conv_0" in w:
        for layer in ("conv_0", "conv_1"):
            x = relu(numpy_conv_same(x, w[layer]["kernel"], w[layer]["bias"]))
            n, h, wd, c = x.shape
            x = x.reshape(n, h // 2, 2, wd // 2, 2, c).max(axis=(2, 4))
    x = x.reshape(len(x), -1)
    x = relu(x @ w["dense_0"]["kernel"] + w["dense_0"]["bias"])
    return x @ w["dense_1"]["kernel"] + w["dense_1"]["bias"]


def random_images(rng, n):
    """Images as `fmnist.data.preprocess` makes them: uint8 / 255 in float32, NHWC."""
    return rng.integers(0, 256, (n, 28, 28, 1)).astype(np.float32) / np.float32(255)
