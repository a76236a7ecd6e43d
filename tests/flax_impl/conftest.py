"""Shared fixtures for the Flax tests."""

import pytest


@pytest.fixture(scope="session")
def small_splits(real_splits):
    """Real Fashion-MNIST: the first 2000 training examples, 2000 validation and 2000 test examples."""
    return real_splits(train_limit=2000, test_limit=2000)
