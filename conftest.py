"""Fixtures for every test folder (tests/ and parity_tests/)."""

import numpy as np
import pytest

from fmnist.data import DataError, load_splits


@pytest.fixture(scope="session")
def real_splits():
    """`real_splits(**sizes)` = `fmnist.data.load_splits(**sizes)` on the real Fashion-MNIST, or the
    test is skipped with the data module's reason when the dataset is missing (`make data` installs
    it; `make test` runs that first, so CI never skips)."""
    def load(**sizes):
        try:
            return load_splits(**sizes)
        except DataError as e:
            pytest.skip(f"Fashion-MNIST not available: {e}")
    return load


@pytest.fixture
def rng():
    """A fresh `np.random.default_rng(0)` per test: random inputs that are the same on every run."""
    return np.random.default_rng(0)
