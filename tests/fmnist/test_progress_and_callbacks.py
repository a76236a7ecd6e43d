"""Keras-style progress display, callbacks, running metrics and the shared epoch loop."""

import io

import numpy as np
import pytest

from fmnist import loop, progress
from fmnist.callbacks import Callback, EarlyStopping, History, ProgressBar
from fmnist.config import TrainConfig
from fmnist.data import Splits
from fmnist.metrics import RunningMean


def test_bar_shapes():
    assert progress.bar(0) == "[>" + "." * 29 + "]"
    assert progress.bar(0.5) == "[" + "=" * 15 + ">" + "." * 14 + "]"
    assert progress.bar(1) == "[" + "=" * 30 + "]"


def test_final_line_counts_completed_steps_and_shows_validation():
    out = io.StringIO()
    bar = progress.Progbar(1875, out, interactive=False)
    bar.update(10, {"loss": 1.0})  # not a terminal: nothing until the end of the epoch
    assert out.getvalue() == ""
    bar.finish({"loss": 0.49581, "accuracy": 0.82449, "val_loss": 0.4, "val_accuracy": 0.85})
    line = out.getvalue()
    assert line.startswith("1875/1875 [" + "=" * 30 + "] - ")
    assert "/step - loss: 0.4958 - accuracy: 0.8245 - val_loss: 0.4000 - val_accuracy: 0.8500\n" in line
    assert line.count("\n") == 1


def test_terminal_redraws_in_place():
    out = io.StringIO()
    bar = progress.Progbar(4, out, interactive=True, min_interval=0)
    for step in range(1, 4):
        bar.update(step, {"loss": 1.0 / step})
    bar.finish({"loss": 0.25})
    text = out.getvalue()
    assert text.count("\r") == 4 and text.count("\n") == 1
    assert "3/4 [" in text and "ETA" in text and text.rstrip().endswith("loss: 0.2500")


def test_running_mean_is_weighted_by_batch_size():
    m = RunningMean()
    m.update(loss_sum=2.0 * 32, correct=16, count=32)
    m.update(loss_sum=10.0 * 4, correct=4, count=4)
    assert m.loss == pytest.approx((64 + 40) / 36)  # not (2 + 10) / 2
    assert m.accuracy == pytest.approx(20 / 36)


def test_early_stopping_waits_patience_epochs():
    es = EarlyStopping("val_loss", patience=2)
    es.on_train_begin(None)
    for epoch, v in enumerate([1.0, 0.9, 0.95, 0.91]):
        es.on_epoch_end(epoch, {"val_loss": v})
    assert es.stop_training and es.stopped_epoch == 3
    acc = EarlyStopping("val_accuracy", patience=1)
    acc.on_train_begin(None)
    acc.on_epoch_end(0, {"val_accuracy": 0.5})
    acc.on_epoch_end(1, {"val_accuracy": 0.6})
    assert not acc.stop_training


def toy_splits(n=10, n_val=3):
    rng = np.random.default_rng(0)
    return Splits(rng.random((n, 2), dtype=np.float32), np.arange(n) % 2,
                  rng.random((n_val, 2), dtype=np.float32), np.arange(n_val) % 2,
                  rng.random((2, 2), dtype=np.float32), np.arange(2))


def test_fit_visits_every_example_once_per_epoch_in_the_shared_order():
    config = TrainConfig(epochs=2, batch_size=4, steps_per_call=2, val_size=3)
    splits = toy_splits()
    calls = []

    def run_steps(state, batches):
        calls.append(batches)
        return state + batches.shape[0], np.full(len(batches), 0.5), np.full(len(batches), 1)

    history = History()
    state, rows = loop.fit(config, splits, 0, run_steps, lambda s, x, y: (0.1, 0.9), [history])
    # 10 examples, batch 4 -> batches of 4, 4, 2: one call of 2 steps and one of the partial batch.
    assert [c.shape for c in calls] == [(2, 4), (1, 2)] * 2 and state == 6
    order = loop.train_loader(config, splits).epoch_order(1)
    np.testing.assert_array_equal(np.concatenate([c.ravel() for c in calls[2:]]), order)
    assert rows == history.epochs and [r["epoch"] for r in rows] == [1, 2]
    assert rows[0]["loss"] == pytest.approx(0.5) and rows[0]["accuracy"] == pytest.approx(3 / 10)
    assert rows[0]["val_loss"] == 0.1 and rows[0]["seconds"] >= 0


def test_fit_stops_when_a_callback_asks():
    class StopAfterFirst(Callback):
        def on_epoch_end(self, epoch, logs):
            self.stop_training = True

    out = io.StringIO()
    config = TrainConfig(epochs=5, batch_size=5)
    _, rows = loop.fit(config, toy_splits(), 0, lambda s, b: (s, np.zeros(len(b)), np.zeros(len(b))),
                       lambda s, x, y: (0.0, 1.0), [StopAfterFirst(), ProgressBar(out, interactive=False)])
    assert len(rows) == 1
    assert out.getvalue().startswith("Epoch 1/5\n2/2 [")


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(batch_size=0), dict(lr=-1), dict(optimizer="rmsprop"),
                                 dict(adam_convention="torch"), dict(model="resnet"), dict(init="zeros"),
                                 dict(momentum=1.5), dict(seed=-1), dict(seed=2**32), dict(lr=float("inf")),
                                 dict(adam_eps=float("nan"))])
def test_config_rejects_impossible_values(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_fit_honours_early_stopping_from_the_config():
    config = TrainConfig(epochs=10, batch_size=5, early_stopping_patience=2)
    val_losses = iter([1.0, 0.9, 0.95, 0.97, 0.5, 0.4])  # no improvement in epochs 3 and 4
    _, rows = loop.fit(config, toy_splits(), 0, lambda s, b: (s, np.zeros(len(b)), np.zeros(len(b))),
                       lambda s, x, y: (next(val_losses), 0.5))
    assert len(rows) == 4
