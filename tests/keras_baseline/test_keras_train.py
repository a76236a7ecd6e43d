"""Keras training: the shared batch order, Keras's loss bookkeeping, optimizers, callbacks, a real run."""

import importlib.util
import io
import math

import numpy as np
import pytest

if not all(importlib.util.find_spec(m) for m in ("tensorflow", "keras")):
    pytest.skip("Keras/TensorFlow not installed (pip install -c constraints.txt -e '.[keras]')",
                allow_module_level=True)

from fmnist.callbacks import Callback, EarlyStopping, History, ProgressBar  # noqa: E402
from fmnist.config import TrainConfig  # noqa: E402
from fmnist.history import EPOCH_KEYS, RunResult  # noqa: E402
from fmnist.loop import train_loader  # noqa: E402
from fmnist.weights import check_weights, init_weights, max_abs_diff  # noqa: E402
from keras_baseline import models, train  # noqa: E402

EPOCHS = 3


def batches_of(loader, epoch):
    """The (x, y) batches of one epoch in the shared order."""
    return [loader.dataset[idx] for idx in loader.batch_indices(epoch)]


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def fit_and_manual(request, tiny_splits):
    """The same 3 epochs twice: `train_and_evaluate` (one `fit`), and `train_on_batch` over the shared batches."""
    config = TrainConfig(model=request.param, epochs=EPOCHS, batch_size=32, val_size=50)
    weights = init_weights(config.model, config.init, config.seed)
    result = train.train_and_evaluate(config, tiny_splits, weights)
    loader = train_loader(config, tiny_splits)
    manual = train.compiled_model(config, weights)
    losses = [train.train_steps(manual, batches_of(loader, e)) for e in range(EPOCHS)]
    return config, weights, result, manual, loader, losses


def test_fit_feeds_the_shared_batch_order(fit_and_manual):
    """fit on the PyDataset and train_on_batch on the shared batches leave bitwise identical weights.

    Three epochs, so the per-epoch reshuffle is covered, and 100 examples in batches of 32, so the
    partial last batch is too.
    """
    config, weights, result, manual, loader, _ = fit_and_manual
    assert max_abs_diff(result.weights, models.to_weights(manual)) == 0.0


def test_a_wrong_order_would_be_caught(fit_and_manual, tiny_splits):
    """The check above has teeth: replaying epoch 0's order every epoch gives different weights."""
    config, weights, result, _, loader, _ = fit_and_manual
    replay = train.compiled_model(config, weights)
    for _ in range(EPOCHS):
        train.train_steps(replay, batches_of(loader, 0))
    assert max_abs_diff(result.weights, models.to_weights(replay)) > 1e-4


def test_history_loss_is_the_batch_weighted_mean_of_pre_update_losses(fit_and_manual):
    config, _, result, _, loader, losses = fit_and_manual
    for epoch, batch_losses in enumerate(losses):
        sizes = np.array([len(idx) for idx in loader.batch_indices(epoch)])
        assert list(sizes) == [32, 32, 32, 4]
        reported = result.epochs[epoch]["loss"]
        # Keras's Mean metric in float32: total += loss * batch size, count += batch size, total / count.
        total = count = np.float32(0)
        for loss, size in zip(batch_losses, sizes):
            total, count = np.float32(total + np.float32(loss * np.float32(size))), np.float32(count + size)
        assert reported == float(np.float32(total / count))  # measured: bitwise equal
        # The fmnist definition (fmnist.metrics), in float64: 4 float32 additions round by a few ulps.
        weighted = float(np.sum(batch_losses.astype(np.float64) * sizes) / sizes.sum())
        assert reported == pytest.approx(weighted, rel=1e-6)
        # ... and not the mean over batches, which the partial batch of 4 would shift.
        assert abs(reported - float(np.mean(batch_losses, dtype=np.float64))) > 1e-4


def test_run_result_schema(fit_and_manual):
    config, _, result, _, _, _ = fit_and_manual
    assert isinstance(result, RunResult) and result.impl == "keras" and result.config == config
    assert [row["epoch"] for row in result.epochs] == list(range(1, EPOCHS + 1))
    for row in result.epochs:
        assert tuple(row) == EPOCH_KEYS
        assert all(isinstance(row[k], float) and math.isfinite(row[k]) for k in EPOCH_KEYS[1:])
        assert row["seconds"] > 0
    check_weights(config.model, result.weights)
    saved = result.to_json()
    assert saved["impl"] == "keras" and "keras" in saved["versions"]


def test_evaluate_gives_the_test_metrics_of_the_run(fit_and_manual, tiny_splits):
    """`evaluate` is what `train_and_evaluate` reports, on a compiled model and on a `from_weights` one."""
    config, _, result, manual, _, _ = fit_and_manual
    x, y = tiny_splits.x_test, tiny_splits.y_test
    assert train.evaluate(manual, x, y, config.eval_batch_size) == (result.test_loss, result.test_accuracy)
    fresh = models.from_weights(config.model, result.weights)
    assert train.evaluate(fresh, x, y, config.eval_batch_size) == (result.test_loss, result.test_accuracy)
    loss, accuracy = train.evaluate(fresh, x, y, batch_size=7)  # batches of 7: the last one partial
    assert type(loss) is float and loss == pytest.approx(result.test_loss, rel=1e-6)
    assert accuracy == result.test_accuracy


def test_paper_convention_is_refused():
    config = TrainConfig(adam_convention="paper")
    with pytest.raises(ValueError, match="epsilon-hat"):
        train.check(config)
    train.check(TrainConfig(adam_convention="keras"))
    with pytest.raises(ValueError, match=r"only the epsilon-hat \('keras'\) convention.*--adam-convention keras"):
        train.make_optimizer(config)
    with pytest.raises(ValueError, match="epsilon-hat"):
        train.train_and_evaluate(config, None, init_weights("mlp"))


def test_make_optimizer_uses_the_config():
    adam = train.make_optimizer(TrainConfig(lr=3e-4, b1=0.8, b2=0.99, adam_eps=1e-6))
    assert type(adam).__name__ == "Adam"
    assert (float(adam.learning_rate), adam.beta_1, adam.beta_2, adam.epsilon) == \
        pytest.approx((3e-4, 0.8, 0.99, 1e-6))
    sgd = train.make_optimizer(TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9))
    assert type(sgd).__name__ == "SGD" and sgd.momentum == 0.9


def test_keras_sgd_momentum_equals_optax_form():
    """Keras v = m*v - lr*g, p += v and optax t = g + m*t, p -= lr*t give the same trajectory."""
    rng = np.random.default_rng(0)
    lr, momentum, steps = 0.1, 0.9, 50
    p0 = rng.normal(size=1000).astype(np.float32)
    grads = rng.normal(size=(steps, 1000)).astype(np.float32)
    var = train.keras.Variable(p0)
    sgd = train.keras.optimizers.SGD(learning_rate=lr, momentum=momentum)
    p, t = p0.astype(np.float64), np.zeros(1000)
    for g in grads:
        sgd.apply_gradients([(train.keras.ops.convert_to_tensor(g), var)])
        t = g + momentum * t
        p = p - lr * t
    # float32 rounds both updates by an ulp or so per step; |p| reaches 21 here (ulp 1.9e-6).
    # Measured: 7.3e-6 (7.5e-6 worst over seeds 0-2), about 4 ulps after 50 steps.
    np.testing.assert_allclose(np.asarray(var.numpy()), p, rtol=0, atol=2e-5)


class Recorder(Callback):
    """Remembers every call a training loop makes."""

    def __init__(self):
        self.calls, self.batch_steps = [], []

    def on_train_begin(self, config): self.calls.append("train_begin")
    def on_epoch_begin(self, epoch, num_steps): self.calls.append(("epoch_begin", epoch, num_steps))
    def on_batch_end(self, step, logs): self.batch_steps.append(step)
    def on_epoch_end(self, epoch, logs): self.calls.append(("epoch_end", epoch))
    def on_train_end(self, logs): self.calls.append(("train_end", sorted(logs)))


def test_project_callbacks_see_the_run_and_keras_prints_progress(tiny_splits, capsys):
    config = TrainConfig(epochs=2, batch_size=32, val_size=50)
    stream = io.StringIO()
    history, recorder = History(), Recorder()
    result = train.train_and_evaluate(config, tiny_splits, init_weights("mlp"),
                                      callbacks=[ProgressBar(stream, interactive=False), history, recorder])
    assert history.epochs == result.epochs
    assert recorder.calls == ["train_begin", ("epoch_begin", 0, 4), ("epoch_end", 0),
                              ("epoch_begin", 1, 4), ("epoch_end", 1),
                              ("train_end", ["test_accuracy", "test_loss"])]
    assert recorder.batch_steps == [1, 2, 3, 4] * 2
    out = stream.getvalue()
    assert capsys.readouterr().out == ""  # everything went to the ProgressBar's stream
    # Keras's verbose=2 lines ("4/4 - 0s - 12ms/step - accuracy: ..."), once per epoch; the project's
    # bar ("4/4 [=====...] - loss: ...") is not drawn as well.
    assert out.count("Epoch 1/2\n") == 1 and out.count("Epoch 2/2\n") == 1
    assert out.count("4/4 - ") == 2 and "[===" not in out and "val_loss" in out
    assert out.endswith(f"test_loss: {result.test_loss:.4f} - test_accuracy: {result.test_accuracy:.4f}\n")


def test_early_stopping_uses_keras_semantics(tiny_splits):
    """Keras's EarlyStopping stops where the project's would, given the same validation losses."""
    # lr 0.05 on random labels: the validation loss stops improving within a few epochs.
    config = TrainConfig(epochs=8, batch_size=32, val_size=50, lr=0.05, early_stopping_patience=1)
    result = train.train_and_evaluate(config, tiny_splits, init_weights("mlp"))
    assert len(result.epochs) < config.epochs
    same = EarlyStopping(monitor="val_loss", patience=1)
    same.on_train_begin(config)
    for epoch, row in enumerate(result.epochs):
        same.on_epoch_end(epoch, row)
    assert same.stopped_epoch == len(result.epochs) - 1


def test_learns_real_fashion_mnist(real_splits):
    splits = real_splits(train_limit=2000, test_limit=1000)
    config = TrainConfig(model="mlp", epochs=2, batch_size=32, train_limit=2000)
    result = train.train_and_evaluate(config, splits, init_weights("mlp", config.init, config.seed))
    # Chance is 0.10. Measured: 0.766 test accuracy (0.763-0.775 for seeds 0-2), 2 epochs on 2000 examples.
    assert result.test_accuracy > 0.7
    assert result.epochs[1]["loss"] < result.epochs[0]["loss"]
    assert [tuple(row) for row in result.epochs] == [EPOCH_KEYS] * 2
