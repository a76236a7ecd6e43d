"""Weight initialisers, in NumPy, so one seed gives the same numbers to every implementation.

Each takes a `numpy.random.Generator`, a kernel shape and the layer's fans, and returns float32.
For a Dense kernel (in, out): fan_in = in, fan_out = out. For a conv kernel (kh, kw, cin, cout):
fan_in = kh*kw*cin, fan_out = kh*kw*cout (as Keras and Flax count them).

The libraries disagree on their defaults, which is why the project copies weights instead of
re-initialising: Keras's Dense/Conv2D default to glorot_uniform, Flax's nn.Dense/nn.Conv to
lecun_normal, and the blog post used He-normal.
"""

from __future__ import annotations

import numpy as np

# std of a standard normal truncated to [-2, 2]; dividing by it restores the requested std
# (the constant Keras and jax.nn.initializers use).
TRUNCATED_NORMAL_STD = 0.87962566103423978


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a Dense (in, out) or conv HWIO kernel."""
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


def truncated_normal(rng: np.random.Generator, shape, std: float) -> np.ndarray:
    """Normal(0, std) truncated to +-2 std, with the std corrected for the truncation."""
    z = rng.standard_normal(shape)
    bad = np.abs(z) > 2.0
    while bad.any():  # resample out-of-range draws; about 4.6% each round
        z[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(z) > 2.0
    return (z * (std / TRUNCATED_NORMAL_STD)).astype(np.float32)


def glorot_uniform(rng: np.random.Generator, shape) -> np.ndarray:
    """U(-l, l) with l = sqrt(6 / (fan_in + fan_out)). Keras's default."""
    fan_in, fan_out = fans(shape)
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape).astype(np.float32)


def he_normal(rng: np.random.Generator, shape) -> np.ndarray:
    """N(0, 2 / fan_in), untruncated, as the blog post wrote it.

    (Keras's `he_normal` truncates at 2 std; the post's `normal * sqrt(2 / n_in)` does not.)
    """
    fan_in, _ = fans(shape)
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def lecun_normal(rng: np.random.Generator, shape) -> np.ndarray:
    """Truncated N(0, 1 / fan_in), as Flax's default `nn.initializers.lecun_normal()`."""
    fan_in, _ = fans(shape)
    return truncated_normal(rng, shape, np.sqrt(1.0 / fan_in))


INITIALIZERS = {"glorot_uniform": glorot_uniform, "he_normal": he_normal, "lecun_normal": lecun_normal}


def get(name: str):
    """The initialiser called `name`; a ValueError lists the valid names."""
    try:
        return INITIALIZERS[name]
    except KeyError:
        raise ValueError(f"unknown initialiser {name!r}; choose one of {', '.join(INITIALIZERS)}") from None
