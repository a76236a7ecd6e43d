"""Tiny synthetic data for the Keras tests (the real-data test loads Fashion-MNIST itself)."""

import numpy as np
import pytest

from fmnist.data import Splits
from tests.shared import random_images





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
