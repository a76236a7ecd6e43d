"""Helpers several test folders share: random inputs and weights, and a float64 NumPy forward pass.

Imported as `from tests.shared import ...` (the repository root is on pytest's path through the
root conftest.py). Fixtures every folder uses (`rng`, `real_splits`) are in the root conftest.py.
"""

import numpy as np

from fmnist.weights import KERNEL_SHAPES


def random_images(rng: np.random.Generator, n: int) -> np.ndarray:
    """Images like `fmnist.data.preprocess` makes: uint8 pixel values / 255, float32 NHWC (n, 28, 28, 1)."""
    return rng.integers(0, 256, (n, 28, 28, 1)).astype(np.float32) / np.float32(255)


def random_weights(name: str, seed: int = 0) -> dict:
    """Canonical weights of `name` with He-scaled random kernels AND random biases (init_weights has
    zero biases, which would hide a dropped or misplaced bias)."""
    rng = np.random.default_rng(seed)
    return {layer: {"kernel": (rng.standard_normal(shape) * np.sqrt(2 / np.prod(shape[:-1]))).astype(np.float32),
                    "bias": (0.1 * rng.standard_normal(shape[-1])).astype(np.float32)}
            for layer, shape in KERNEL_SHAPES[name].items()}



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
