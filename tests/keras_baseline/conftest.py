"""Tiny synthetic data for the Keras tests (the real-data test loads Fashion-MNIST itself)."""

import numpy as np
import pytest

from fmnist.data import Splits


def random_images(rng: np.random.Generator, n: int) -> np.ndarray:
    """Images like `fmnist.data.preprocess` makes: uint8 pixel values / 255, float32 NHWC."""
    return rng.integers(0, 256, (n, 28, 28, 1)).astype(np.float32) / np.float32(255)


@pytest.fixture(scope="session")
def batch():
    """64 random images and labels."""
    rng = np.random.default_rng(1)
    return random_images(rng, 64), rng.integers(0, 10, 64).astype(np.int32)


@pytest.fixture(scope="session")
def tiny_splits() -> Splits:
    """100 training examples (batch 32 gives 32, 32, 32 and a partial 4), 50 validation, 50 test."""
    rng = np.random.default_rng(0)
    arrays = []
    for n in (100, 50, 50):
        arrays += [random_images(rng, n), rng.integers(0, 10, n).astype(np.int32)]
    return Splits(*arrays)
