"""Shared fixtures for the NNX tests."""

import pytest


@pytest.fixture(scope="session")
def small_splits(real_splits):
    """Real Fashion-MNIST: the first 2000 training examples, 1000 validation and 1000 test examples."""
    return real_splits(val_size=1000, train_limit=2000, test_limit=1000)

