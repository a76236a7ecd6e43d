"""Whole runs where every batch boundary is awkward: two epochs, partial batches everywhere.

The epoch test in test_training.py uses sizes that every batch size divides (4,000 training
examples at batch 32, 1,000-example sets at evaluation batch 1,000), so no partial batch reaches
it. Here the training set leaves a partial last batch in every epoch, validation and test sets
leave a partial evaluation batch (evaluation batch 128), and two epochs use two batch orders.
Every implementation trains through its own `train_and_evaluate` (the fast path; Keras's `fit`
and `evaluate`).

MLP: each history against `float64_reference.train_history`, which reads the IDX files, scales
the pixels, splits, orders the batches and keeps Keras's books itself, importing nothing from the
project: the shared inputs and bookkeeping get an independent check. A wrongly weighted partial
batch, a dropped or repeated example, epoch 1's order reused in epoch 2, or a padded example
counted in an evaluation moves these numbers by 1e-3 or more.
CNN: float64 cannot be followed for two epochs (a float32 max-pool tie or ReLU decision breaks
the other way within a few steps; test_training.py), so every implementation is compared with the
hand-rolled run, which the MLP part ties to float64.
"""

from __future__ import annotations

import importlib.util

import float64_reference as ref
from fmnist.config import TrainConfig
from fmnist.data import find_data_dir
from fmnist.weights import init_weights
from parity import HAVE_TF, check

# (training examples, validation = test examples): 1000 = 31 * 32 + 8, 400 = 12 * 32 + 16;
# 300 = 2 * 128 + 44.
SIZES = {"mlp": (1000, 300), "cnn": (400, 300)}
IMPLS = ["handrolled", "flax"] + (["nnx"] if importlib.util.find_spec("nnx_impl") else []) + (["keras"] if HAVE_TF else [])


def config_for(model_name: str) -> TrainConfig:
    train, val = SIZES[model_name]
    return TrainConfig(model=model_name, epochs=2, batch_size=32, lr=1e-3, optimizer="adam",
                       adam_convention="keras", seed=0, eval_batch_size=128, val_size=val, train_limit=train)


def run_every_impl(model_name, real_splits):
    """impl -> RunResult of `config_for(model_name)` from the canonical initial weights."""
    from fmnist.app import runner

    config = config_for(model_name)
    splits = real_splits(val_size=config.val_size, train_limit=config.train_limit, test_limit=config.val_size)
    assert len(splits.x_train) % config.batch_size and len(splits.x_val) % config.eval_batch_size
    assert len(splits.x_test) % config.eval_batch_size
    weights = init_weights(model_name, config.init, config.seed)
    return {impl: runner.run(impl, config, splits, weights, callbacks=[]) for impl in IMPLS}


def compare_runs(model_name, impl, got, want, test, loss_tol, accuracy_tol, against):
    assert len(got.epochs) == len(want) == 2
    for row, expected in zip(got.epochs, want):
        for key in ("loss", "val_loss"):
            check(f"{model_name} epoch {row['epoch']} {key} {impl} vs {against}", abs(row[key] - expected[key]), loss_tol)
        for key in ("accuracy", "val_accuracy"):
            check(f"{model_name} epoch {row['epoch']} {key} {impl} vs {against}", abs(row[key] - expected[key]), accuracy_tol)
    check(f"{model_name} test_loss {impl} vs {against}", abs(got.test_loss - test[0]), loss_tol)
    check(f"{model_name} test_accuracy {impl} vs {against}", abs(got.test_accuracy - test[1]), accuracy_tol)


# MLP vs float64, measured (jax 0.12 and 0.10, all four implementations): losses 1.8e-6 at most
# (epoch 1 training loss; ~64 Adam steps of float32 rounding), accuracies 1.7e-8 (Keras's
# float32 running mean; the JAX ones 0: the same predictions). Asserted 1e-5 on losses (5x), and
# 1e-6 on accuracies, far below one prediction (1/300 = 3.3e-3): every prediction must agree.
MLP_LOSS_TOL, ACCURACY_TOL = 1e-5, 1e-6


def test_mlp_two_epochs_with_partial_batches_match_float64(real_splits):
    histories = run_every_impl("mlp", real_splits)
    config = config_for("mlp")
    data = ref.splits(find_data_dir(), config.val_size, config.split_seed, config.train_limit, config.val_size)
    rows, *test = ref.train_history(init_weights("mlp", config.init, config.seed), data, config.epochs,
                                    config.batch_size, config.seed, config.optimizer, config.lr,
                                    config.b1, config.b2, config.adam_eps)
    for impl, result in histories.items():
        compare_runs("mlp", impl, result, rows, test, MLP_LOSS_TOL, ACCURACY_TOL, "float64")


# CNN vs the hand-rolled run, measured: Flax and NNX train bit-identically (training loss and
# accuracy 0) and evaluate in padded, masked batches where the hand-rolled `evaluate` compiles the
# partial batch apart (val/test loss 5.1e-8, a different float32 summation order); Keras 1.9e-7
# (val_loss), accuracies 2.6e-8. Asserted 1e-6 on losses (~5x) and ACCURACY_TOL on accuracies.
CNN_LOSS_TOL = 1e-6


def test_cnn_two_epochs_with_partial_batches_agree(real_splits):
    histories = run_every_impl("cnn", real_splits)
    base = histories["handrolled"]
    for impl, result in histories.items():
        compare_runs("cnn", impl, result, base.epochs, (base.test_loss, base.test_accuracy),
                     CNN_LOSS_TOL, ACCURACY_TOL, "handrolled")
