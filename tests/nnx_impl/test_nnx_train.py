"""Training: the Flax-examples NNX step, the split/merge fast path, evaluation, and a whole run."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fmnist.callbacks import Callback, History
from fmnist.config import TrainConfig
from fmnist.history import EPOCH_KEYS, RunResult
from tests.shared import random_images
from fmnist.weights import check_weights, init_weights
from flax_impl import models as linen_models
from flax_impl import train as linen_train
from fmnist.fastpath import steps as fastpath
from fmnist.weights import model_of
from nnx_impl.models import from_weights, to_weights
from nnx_impl.train import (create_optimizer, evaluate, loss_and_correct, loss_and_grads, make_optimizer,
                            make_run_steps, train_and_evaluate, train_step)

eval_step = nnx.jit(loss_and_correct)  # (mean loss, correct) of one batch, no update
train_step = nnx.jit(train_step)





def fresh(model_name, config=None):
    """(model, optimizer) from the canonical initial weights."""
    config = config or TrainConfig(model=model_name)
    model = from_weights(model_name, init_weights(model_name))
    return model, create_optimizer(model, make_optimizer(config))


def max_diff(a, b):
    """Largest |a - b| over two canonical weights dicts."""
    return max(float(np.max(np.abs(a[layer][k] - b[layer][k]))) for layer in a for k in a[layer])


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return random_images(rng, 200), rng.integers(0, 10, 200).astype(np.int32)


def test_train_step_reports_the_loss_before_its_update(data):
    x, y = jnp.asarray(data[0][:32]), jnp.asarray(data[1][:32])
    model, optimizer = fresh("mlp")
    before = to_weights(model)
    before_loss, before_correct = eval_step(model, x, y)
    loss, correct = train_step(model, optimizer, x, y)  # updates model and optimizer in place
    # the same forward pass compiled into two programs (with and without the backward pass):
    # measured equal here; 1e-6 allows XLA to fuse the two differently (float32 rounding of a mean).
    assert abs(float(loss) - float(before_loss)) < 1e-6
    assert int(correct) == int(before_correct)
    assert int(optimizer.step[...]) == 1 and max_diff(to_weights(model), before) > 0
    after_loss, _ = eval_step(model, x, y)
    assert float(after_loss) < float(loss)  # one Adam step on this very batch lowers its loss


def run_twice(model_name, data, fast):
    """Two calls of 3 steps each through `make_run_steps`, chaining the (donated) state."""
    x, y = data
    batches = np.random.default_rng(1).integers(0, len(x), (3, 8)).astype(np.int32)
    graphdef, state = nnx.split(fresh(model_name))
    run_steps = make_run_steps(TrainConfig(model=model_name, fast=fast), graphdef, x, y)
    state, losses, corrects = run_steps(state, batches)
    assert losses.shape == corrects.shape == (3,)
    state, losses2, corrects2 = run_steps(state, batches)  # chaining a donated state works
    model, optimizer = nnx.merge(graphdef, state)
    assert int(optimizer.step[...]) == 6
    return np.concatenate([losses, losses2]), np.concatenate([corrects, corrects2]), to_weights(model), batches


def test_mlp_fast_run_steps_equal_single_train_steps_bit_for_bit(data):
    """MLP: the fast path's steps (one `lax.scan`, compiler options) = the readable path's
    (`nnx.jit(train_step)` per batch) = K calls of `train_step`, to the bit: the same float32 ops
    in the same order (the MLP's programs are the same with and without the options)."""
    fast_losses, fast_corrects, fast_weights, batches = run_twice("mlp", data, fast=True)
    plain_losses, plain_corrects, plain_weights, _ = run_twice("mlp", data, fast=False)
    np.testing.assert_array_equal(fast_losses, plain_losses)
    np.testing.assert_array_equal(fast_corrects, plain_corrects)
    assert max_diff(fast_weights, plain_weights) == 0.0
    x, y = data
    model, optimizer = fresh("mlp")
    step_losses = [train_step(model, optimizer, jnp.asarray(x[idx]), jnp.asarray(y[idx]))[0]
                   for idx in np.concatenate([batches, batches])]
    np.testing.assert_array_equal(fast_losses, np.asarray(step_losses, np.float32))
    assert max_diff(fast_weights, to_weights(model)) == 0.0


def test_cnn_fast_run_steps_equal_single_train_steps(data):
    """CNN: the fast path's steps (the loop, the 2-slice gradient, compiler options) against the
    readable `train_step` (nnx.jit), both on the plain layers."""
    losses, corrects, weights, batches = run_twice("cnn", data, fast=True)
    x, y = data
    model, optimizer = fresh("cnn")
    want_losses, want_corrects = [], []
    for idx in np.concatenate([batches, batches]):
        loss, correct = train_step(model, optimizer, jnp.asarray(x[idx]), jnp.asarray(y[idx]))
        want_losses.append(float(loss))
        want_corrects.append(int(correct))
    assert list(corrects) == want_corrects
    # `nnx.jit` takes no compiler options, so `train_step` runs the convolutions in YNNPACK and the
    # fast path in XLA's own kernels (fmnist.fastpath.xla.COMPILER_OPTIONS), which sum in another
    # order, and the fast path adds the two slices' gradients. Measured after 6 steps: losses
    # (~2.3) 4.8e-7-7.2e-7 apart (2-3 ulp), parameters 2.1e-7-7.4e-7 (jax 0.10.2 and 0.12.0.1).
    # 1e-5 is float32 rounding with room; a wrong batch or a skipped update is O(0.1).
    np.testing.assert_allclose(losses, want_losses, rtol=0, atol=1e-5)
    assert max_diff(weights, to_weights(model)) < 1e-5


def test_evaluate_covers_every_example_including_a_partial_batch(data):
    x, y = data[0][:50], data[1][:50]
    model, optimizer = fresh("cnn")
    loss, correct = eval_step(model, jnp.asarray(x), jnp.asarray(y))  # one batch of 50
    for batch_size in (7, 50, 1000):  # 7 -> 7 full batches and a padded, masked batch of 1
        got_loss, got_accuracy = evaluate(model, x, y, batch_size=batch_size)
        # per-batch float32 sums added in float64 on the host, vs one float32 mean over 50:
        # rounding only, measured <= 1.3e-7 on a loss of 3.6 in the linen twin (ulp 2.4e-7)
        assert abs(got_loss - float(loss)) < 1e-6
        assert got_accuracy == int(correct) / 50
    # what `run_steps` carries, (graphdef, state) of (model, optimizer), evaluates the same
    assert evaluate(nnx.split((model, optimizer)), x, y, batch_size=7) == evaluate(model, x, y, batch_size=7)


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_evaluate_equals_linen_evaluate_bit_for_bit(data, model_name):
    """The same pad-and-mask evaluation as `flax_impl.train.evaluate`, the same compiled sums: the
    same mean loss and accuracy to the bit (what makes the two runs' test losses identical)."""
    x, y = data[0][:150], data[1][:150]
    weights = init_weights(model_name, "he_normal", 2)
    got = evaluate(from_weights(model_name, weights), x, y, batch_size=64)  # 64, 64 and a padded 22
    assert got == linen_train.evaluate(linen_models.from_weights(model_of(weights), weights), x, y, batch_size=64)


def test_gradient_in_parts_is_the_whole_batch_gradient(small_splits):
    """Slices weighted by their sizes give the whole-batch loss and gradient of an NNX model (whose
    gradient is an `nnx.State`, not a params dict), so the quick MLP shows it."""
    model, _ = fresh("mlp")
    x, y = jnp.asarray(small_splits.x_train[:64]), jnp.asarray(small_splits.y_train[:64])
    (loss1, correct1), g1 = nnx.jit(loss_and_grads)(model, x, y)
    g1 = to_weights(g1)
    # 3 parts of 21, 21, 22 examples: weighted by size, not averaged
    (loss, correct), g = nnx.jit(fastpath.in_slices(loss_and_grads, 3))(model, x, y)
    g = to_weights(g)
    assert int(correct) == int(correct1)
    # The same sums in another order. Measured: loss equal (2.467), gradients 2.9e-7 of max|g|
    # (jax 0.10.2 and 0.12.0.1); a plain mean of the unequal parts' gradients is 1.3e-2 of max|g| off.
    assert abs(float(loss) - float(loss1)) < 1e-6
    for layer in g:
        for k in g[layer]:
            assert np.max(np.abs(g[layer][k] - g1[layer][k])) <= 1.5e-6 * np.max(np.abs(g1[layer][k]))


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_train_begin(self, config):
        self.calls.append("train_begin")

    def on_epoch_end(self, epoch, logs):
        self.calls.append(("epoch_end", epoch))

    def on_train_end(self, logs):
        self.calls.append(("train_end", logs))


@pytest.mark.slow
@pytest.mark.parametrize("model, epochs", [("mlp", 2)])
def test_short_run_on_real_data_learns_and_returns_a_run_result(small_splits, model, epochs):
    """2000 real training examples (62 batches of 32 and a partial one of 16 per epoch). The CNN's
    whole run is left to parity_tests/test_training.py (one epoch, equal to linen's to the bit),
    which costs its compile once rather than twice."""
    config = TrainConfig(model=model, epochs=epochs, batch_size=32, train_limit=2000, val_size=1000)
    initial = init_weights(model, config.init, config.seed)
    initial_copy = {layer: {k: v.copy() for k, v in p.items()} for layer, p in initial.items()}
    history, recorder = History(), Recorder()
    result = train_and_evaluate(config, small_splits, initial, callbacks=[history, recorder])

    assert isinstance(result, RunResult) and result.impl == "nnx" and result.config == config
    assert len(result.epochs) == epochs and history.epochs == result.epochs
    for row in result.epochs:
        assert set(row) == set(EPOCH_KEYS) and all(np.isfinite(row[k]) for k in EPOCH_KEYS)
    json.dumps(result.to_json())  # plain floats and ints all the way down
    check_weights(model, result.weights)
    assert all(result.weights[l][k].dtype == np.float32 for l in initial for k in ("kernel", "bias"))
    assert recorder.calls[0] == "train_begin"
    assert recorder.calls[-1] == ("train_end", {"test_loss": result.test_loss,
                                                "test_accuracy": result.test_accuracy})
    # the donated training state never aliases the caller's arrays
    for layer, p in initial.items():
        for k in p:
            np.testing.assert_array_equal(p[k], initial_copy[layer][k])

    # Chance is 0.1. Measured on these splits over seeds 0-3 (initial weights and batch order): MLP
    # after 2 epochs val 0.763-0.797, test 0.761-0.787 (seed 0, run here: 0.779 / 0.781). 0.7 is
    # below every seed.
    assert result.epochs[-1]["val_accuracy"] > 0.7
    assert result.test_accuracy > 0.7
    if epochs > 1:
        assert result.epochs[-1]["loss"] < result.epochs[0]["loss"]
