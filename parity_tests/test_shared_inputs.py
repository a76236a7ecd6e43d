"""What every implementation shares, checked against a reference that computes it independently.

The parity suite compares implementations with each other, but they all read the same arrays and
follow the same batch order, so a fault there (a wrong scaling, a split that leaks, an epoch order
reused, a partial batch dropped) is invisible to those comparisons. Here `float64_reference`
recomputes the inputs from the IDX files and the documented rules, importing nothing from the
project, and each way of feeding the batches (the JAX implementations' shared loop, Keras's
`PyDataset`) is watched while it trains.
"""

from __future__ import annotations

import numpy as np
import pytest

import float64_reference as ref
from fmnist.callbacks import Callback
from fmnist.config import TrainConfig
from fmnist.data import find_data_dir, load_splits
from fmnist.loop import fit, train_loader
from parity import keras_modules

SIZES = [dict(val_size=5000, split_seed=0), dict(val_size=300, split_seed=7, train_limit=1000, test_limit=300)]


@pytest.fixture(scope="module")
def data_dir(real_splits):
    real_splits(val_size=10, train_limit=10, test_limit=10)  # skips the module without the dataset
    return find_data_dir()


@pytest.mark.parametrize("sizes", SIZES, ids=["default", "small"])
def test_the_arrays_are_the_documented_ones_bit_for_bit(data_dir, sizes):
    got = load_splits(**sizes)
    want = ref.splits(data_dir, sizes["val_size"], sizes["split_seed"], sizes.get("train_limit"), sizes.get("test_limit"))
    names = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
    for name, expected in zip(names, want):
        array = getattr(got, name)
        assert array.dtype == expected.dtype and array.shape == expected.shape, name
        assert np.array_equal(array.view(np.uint32) if array.dtype == np.float32 else array,
                              expected.view(np.uint32) if expected.dtype == np.float32 else expected), name


def test_validation_and_training_examples_are_disjoint(data_dir):
    """The split is a permutation cut in two: no training image index is also a validation one."""
    order = np.random.default_rng(0).permutation(60000)
    assert len(set(order[:5000]) & set(order[5000:])) == 0 and len(set(order)) == 60000


def config(n_train=100, batch_size=32, epochs=2):
    return TrainConfig(model="mlp", epochs=epochs, batch_size=batch_size, seed=3, val_size=0, train_limit=n_train)


def tiny_splits(n_train):
    """Images whose first pixel is their index, so a batch of images names its examples."""
    from fmnist.data import Splits

    x = np.zeros((n_train, 28, 28, 1), np.float32)
    x[:, 0, 0, 0] = np.arange(n_train)
    empty = np.zeros((0, 28, 28, 1), np.float32)
    return Splits(x, np.arange(n_train, dtype=np.int32) % 10, empty, np.zeros(0, np.int32), x[:10], np.zeros(10, np.int32))


def expected_batches(cfg, n_train):
    return [[b.tolist() for b in ref.batch_order(n_train, cfg.batch_size, cfg.seed, e)] for e in range(cfg.epochs)]


def test_the_shared_loader_follows_the_documented_order():
    cfg, n = config(), 100
    loader = train_loader(cfg, tiny_splits(n))
    assert [[b.tolist() for b in loader.batch_indices(e)] for e in range(2)] == expected_batches(cfg, n)


def test_the_jax_loop_feeds_every_batch_once_in_order():
    """`fmnist.loop.fit`, which the hand-rolled, Flax and NNX `train_and_evaluate` drive, hands
    `run_steps` the documented batches: two epochs, a partial last batch (100 = 3 * 32 + 4)."""
    cfg, n = config(), 100
    seen = [[] for _ in range(cfg.epochs)]
    epoch = [0]

    class Watch(Callback):  # which epoch the batches belong to
        def on_epoch_begin(self, e, steps):
            epoch[0] = e

    def run_steps(state, group):
        seen[epoch[0]].extend(row.tolist() for row in np.asarray(group))
        k = len(group)
        return state, np.zeros(k), np.zeros(k, np.int32)

    fit(cfg, tiny_splits(n), None, run_steps, lambda *a: (0.0, 0.0), [Watch()])
    assert seen == expected_batches(cfg, n)


def test_keras_fit_sees_every_batch_once_in_order(monkeypatch):
    """Keras trains on `SharedOrderBatches` through its own `fit`: record every batch it is
    served (the first pixel names the example) and the epoch the dataset was set to."""
    K = keras_modules()
    cfg, n = config(), 100
    splits = tiny_splits(n)
    served = []
    original = K.train.SharedOrderBatches.__getitem__

    def watched(self, i):
        x, y = original(self, i)
        served.append((self.epoch, i, x[:, 0, 0, 0].astype(int).tolist()))
        return x, y

    monkeypatch.setattr(K.train.SharedOrderBatches, "__getitem__", watched)
    from fmnist.weights import init_weights
    K.train.train_and_evaluate(cfg, splits, init_weights("mlp"), callbacks=[])
    # Keras may read a batch ahead of training it; what matters is each epoch's batches, in order.
    per_epoch = [[b for e, i, b in served if e == epoch] for epoch in range(cfg.epochs)]
    want = expected_batches(cfg, n)
    for epoch in range(cfg.epochs):
        distinct = list(dict.fromkeys(map(tuple, per_epoch[epoch])))
        assert [list(b) for b in distinct] == want[epoch], f"epoch {epoch}"
