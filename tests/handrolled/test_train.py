"""The hand-rolled training: the post's `train` (handrolled.post), and the project's steps."""

import functools
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmnist import data
from fmnist.callbacks import History, ProgressBar
from fmnist.config import TrainConfig
from fmnist.weights import init_weights
from fmnist.fastpath.steps import in_slices
from fmnist.fastpath.xla import COMPILER_OPTIONS
from handrolled import train as ht
from handrolled.post import evaluate_loader
from handrolled.models import from_weights


@pytest.fixture(scope="module")
def small_splits(real_splits):
    return real_splits(val_size=1000, train_limit=3000, test_limit=1000)


def test_post_execution_section_runs():
    """The post's Execution section, with only its import and data-loading lines changed
    (our offline `load_data` and a 3000-image subset instead of Keras's downloader)."""
    import jax
    from handrolled import (Adam, Dataloader, Dataset, Linear, Sequential, flatten, relu,
                            rescale_image, softmax, sparse_cross_entropy)
    from handrolled.post import train

    (X_train, y_train), (X_test, y_test) = data.load_data()
    X_train, y_train, X_test, y_test = X_train[:3000], y_train[:3000], X_test[:1000], y_test[:1000]

    def fashion_mnist_mlp():  # from the post's "Some Testing" cell, which defines `model`
        return Sequential(rescale_image, flatten, Linear(784, 128), relu, Linear(128, 10), softmax)

    model = fashion_mnist_mlp()
    # ---- the post's Execution cell from here on, unchanged ----
    train_dataset = Dataset(X_train, y_train)
    valid_dataset = Dataset(X_test, y_test)
    train_datasource = Dataloader(train_dataset, batchsize=32)
    valid_datasource = Dataloader(valid_dataset, batchsize=32)

    network = Sequential(
        rescale_image,
        flatten,
        Linear(28*28, 128),
        relu,
        Linear(128, 10),
        softmax
    )

    grad_fn = jax.jit(jax.grad(lambda model, X, y: sparse_cross_entropy(y, model(X))))

    history = train(
        num_epochs=2,
        train_datasource=train_datasource,
        valid_datasource=valid_datasource,
        optimizer=Adam(model, lr=1e-3),
        loss_fn=sparse_cross_entropy,
        model=network,
        grad_fn=grad_fn
    )
    # ---- end of the post's code ----
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(history["loss"]) == 2 and history["loss"][1] < history["loss"][0]
    # 3000 images, 2 epochs: well above the 0.1 of chance (measured 0.74-0.77).
    assert history["val_accuracy"][-1] > 0.65
    test = evaluate_loader(history.model, valid_datasource, sparse_cross_entropy)
    assert test["accuracy"] == pytest.approx(history["val_accuracy"][-1])


def test_post_train_progress_counts_every_step():
    out = io.StringIO()
    x, y = data.load_splits(val_size=0, train_limit=100).x_train, np.arange(100) % 10
    from handrolled import SGD, Dataloader, Dataset, sparse_cross_entropy_with_logits
    from handrolled.post import train
    loader = Dataloader(Dataset(x, y.astype(np.int32)), batchsize=32)  # 32, 32, 32, 4
    model = from_weights("mlp", init_weights("mlp"))
    history = train(1, loader, None, SGD(lr=0.1), sparse_cross_entropy_with_logits, None, model,
                    callbacks=[ProgressBar(out, interactive=False)])
    assert out.getvalue().startswith("Epoch 1/1\n4/4 [")  # the post printed 3/4 here
    assert set(history) == {"loss", "accuracy"}


def test_fast_and_readable_steps_give_the_same_numbers(small_splits):
    """MLP: the fast path's steps (one `lax.scan`, data on the device, donated state, compiler
    options) against the readable path's (one jitted `train_step` per batch, gathered on the host)."""
    weights = init_weights("mlp", seed=1)
    batches = np.arange(20 * 32, dtype=np.int32).reshape(20, 32)
    x, y = small_splits.x_train, small_splits.y_train
    results = {}
    for fast in (True, False):
        config = TrainConfig(model="mlp", batch_size=32, fast=fast)
        model = from_weights("mlp", weights)
        optimizer = ht.make_optimizer(config)
        (model, _), losses, corrects = ht.make_run_steps(config, optimizer, x, y)((model, optimizer.init(model)),
                                                                                   batches)
        results[fast] = (model, np.asarray(losses), np.asarray(corrects))
    # The readable step compiled WITH the fast path's compiler options: what is left of the fast
    # path (scan, on-device gather, donation) changes no bit.
    optimizer = ht.make_optimizer(TrainConfig(model="mlp"))
    step = jax.jit(functools.partial(ht.train_step, optimizer=optimizer), compiler_options=COMPILER_OPTIONS)
    state, losses = (from_weights("mlp", weights), None), []
    state = (state[0], optimizer.init(state[0]))
    for idx in batches:
        state, loss, _ = step(state, x[idx], y[idx])
        losses.append(loss)
    np.testing.assert_array_equal(results[True][1], np.asarray(losses))
    for a, b in zip(jax.tree.leaves(results[True][0]), jax.tree.leaves(state[0])):
        np.testing.assert_array_equal(a, b)
    # Without the options XLA:CPU generates other vector code (512-bit registers), which rounds
    # some sums differently: measured 2 of 20 losses 1 ulp apart (8.9e-8 relative), the same
    # predictions. 1e-6 is float32 rounding with room; a wrong gather or a skipped step is >1e-3.
    (m1, l1, c1), (m2, l2, c2) = results[True], results[False]
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    np.testing.assert_array_equal(c1, c2)
    for a, b in zip(jax.tree.leaves(m1), jax.tree.leaves(m2)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_train_and_evaluate_learns_and_fills_the_history(small_splits):
    config = TrainConfig(model="mlp", epochs=2, batch_size=32, val_size=1000)
    history = History()
    result = ht.train_and_evaluate(config, small_splits, init_weights("mlp"), [history])
    assert [r["epoch"] for r in result.epochs] == [1, 2] and result.epochs == history.epochs
    for row in result.epochs:
        assert set(row) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"}
    # 3000 training images, 2 epochs of Adam: measured val accuracy 0.78-0.80; chance is 0.1.
    assert result.epochs[-1]["val_accuracy"] > 0.7 and result.test_accuracy > 0.7
    assert result.epochs[1]["loss"] < result.epochs[0]["loss"]
    assert result.weights["dense_0"]["kernel"].shape == (784, 128)


def test_evaluate_counts_the_partial_batch(small_splits):
    model = from_weights("mlp", init_weights("mlp"))
    x, y = small_splits.x_test[:250], small_splits.y_test[:250]
    loss, acc = ht.evaluate(model, x, y, batch_size=100)  # 100, 100, 50
    logits = np.asarray(model(jnp.asarray(x)), np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    ref = np.mean(np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(250), y])
    assert loss == pytest.approx(ref, abs=1e-5)  # float32 batch means vs a float64 reference
    assert acc == np.mean(logits.argmax(axis=1) == y)


def test_gradient_in_parts_is_the_whole_batch_gradient(small_splits):
    model = from_weights("cnn", init_weights("cnn", seed=2))
    x, y = jnp.asarray(small_splits.x_train[:128]), jnp.asarray(small_splits.y_train[:128])
    (loss1, correct1), g1 = jax.jit(ht.loss_and_grads)(model, x, y)
    for parts in (2, 3):  # 3 parts of 42, 43, 43 examples: weighted by size, not averaged
        (loss, correct), g = jax.jit(in_slices(ht.loss_and_grads, parts))(model, x, y)
        assert int(correct) == int(correct1)
        # The same sums in another order. Measured: loss (2.67) 0 and 2.4e-7 (1 ulp) apart, gradients
        # 4.1e-7 of max|g| per tensor; asserted with ~3x margin. A plain mean of the 3 unequal parts
        # (the bug the size weights prevent) is 4.7e-4 off on the loss and 3.0e-3 on the gradients.
        assert abs(float(loss) - float(loss1)) < 1e-6
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g1)):
            assert float(jnp.max(jnp.abs(a - b))) <= 1.5e-6 * float(jnp.max(jnp.abs(b)))
