"""SGD and Adam against optax and a float64 NumPy Keras formula; stateful step vs pure update."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from handrolled import relu
from handrolled.layers import Conv2D, Flatten, Linear, MaxPool2D, Sequential
from handrolled.optimizers import SGD, Adam, AdamState, SGDState

STEPS = 100


def small_model():
    """A model with every kind of parameter (conv and dense kernels, biases), params ~N(0, 0.1)."""
    rng = np.random.default_rng(0)
    p = lambda *shape: (0.1 * rng.standard_normal(shape)).astype(np.float32)
    return Sequential(Conv2D.from_params(p(3, 3, 1, 4), p(4)), relu, MaxPool2D(), Flatten(),
                      Linear.from_params(p(64, 16), p(16)), relu, Linear.from_params(p(16, 10), p(10)))


def grad_sequence(model, steps=STEPS, seed=1):
    """`steps` gradient pytrees shaped like `model`, of three kinds, as in docs/parity-semantics.md §1:
    |g| ~ 1e-2, |g| ~ 1e-6 (where the epsilon conventions differ most), and 1e-3 with 30% zeros."""
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree.flatten(model)
    seq = []
    for _ in range(steps):
        out = []
        for i, leaf in enumerate(leaves):
            g = rng.standard_normal(leaf.shape).astype(np.float32) * [1e-2, 1e-6, 1e-3][i % 3]
            if i % 3 == 2:
                g[rng.random(leaf.shape) < 0.3] = 0.0
            out.append(jnp.asarray(g))
        seq.append(jax.tree.unflatten(treedef, out))
    return seq


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture(scope="module")
def grads(model):
    return grad_sequence(model)


def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def run_ours(opt, model, grads):
    update = jax.jit(opt.update)
    params, state = model, opt.init(model)
    for g in grads:
        params, state = update(g, state, params)
    return params, state


def run_optax(tx, model, grads):
    @jax.jit
    def step(g, state, params):  # jitted as one step, like our update
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state
    params, state = model, tx.init(model)
    for g in grads:
        params, state = step(g, state, params)
    return params


# ----------------------------------------------------------------------------- Adam, paper convention

@pytest.mark.parametrize("lr,b1,b2,eps", [(1e-3, 0.9, 0.999, 1e-7), (3e-2, 0.8, 0.99, 1e-8)])
def test_adam_paper_matches_optax_adam(model, grads, lr, b1, b2, eps):
    ours, state = run_ours(Adam(lr=lr, v_decay=b1, s_decay=b2, eps=eps), model, grads)
    ref = run_optax(optax.adam(lr, b1, b2, eps), model, grads)
    # Same expressions in the same order as optax: measured 0.0 (bitwise) after 100 steps with both
    # steps jitted; 3e-8 if optax's update and apply_updates are dispatched separately (different
    # FMA contraction). The wrong epsilon convention is ~7e-4 away after ONE step.
    assert max_diff(ours, ref) <= 1e-7
    assert int(state.t) == STEPS and state.t.dtype == jnp.int32
    assert max_diff(ours, model) > 1e-3  # the parameters did move


def test_adam_paper_first_step_is_sign_times_lr(model, grads):
    # Step 1 of Adam (paper): m_hat = g, v_hat = g*g, so p moves by -lr * g / (|g| + eps):
    # -lr * sign(g) where |g| >> eps. A wrong bias correction or t offset breaks this.
    opt = Adam(lr=1e-3, eps=1e-7)
    new, _ = opt.update(grads[0], opt.init(model), model)
    g, p, q = (np.asarray(jax.tree.leaves(t)[0], np.float64) for t in (grads[0], model, new))
    np.testing.assert_allclose(q - p, -1e-3 * g / (np.abs(g) + 1e-7), rtol=1e-5, atol=1e-10)


# ----------------------------------------------------------------------------- Adam, Keras convention

def np_adam_keras(model, grads, lr, b1, b2, eps):
    """Keras's Adam update_step, in float64 NumPy."""
    p = [np.asarray(x, np.float64) for x in jax.tree.leaves(model)]
    m = [np.zeros_like(x) for x in p]
    v = [np.zeros_like(x) for x in p]
    for t, g in enumerate(grads, start=1):
        alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        for i, gi in enumerate(jax.tree.leaves(g)):
            gi = np.asarray(gi, np.float64)
            m[i] += (gi - m[i]) * (1 - b1)
            v[i] += (gi * gi - v[i]) * (1 - b2)
            p[i] -= alpha * m[i] / (np.sqrt(v[i]) + eps)
    return p


def test_adam_keras_matches_float64_keras_formula(model, grads):
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-7
    ref = np_adam_keras(model, grads, lr, b1, b2, eps)
    ours, _ = run_ours(Adam(lr=lr, v_decay=b1, s_decay=b2, eps=eps, eps_convention="keras"), model, grads)
    # Only float32 rounding: measured 1.7e-8 after 1 step and 2.7e-7 after 100 (docs/parity-semantics.md
    # §1 measured Keras itself 2.0e-8 / 2.5e-7 away from this float64 formula).
    assert max_diff(jax.tree.leaves(ours), ref) < 1e-6
    one, _ = run_ours(Adam(lr=lr, eps_convention="keras"), model, grads[:1])
    assert max_diff(jax.tree.leaves(one), np_adam_keras(model, grads[:1], lr, b1, b2, eps)) < 1e-7
    # The paper convention is 7.0e-4 from the Keras formula after one step (the |g| ~ 1e-6 leaves),
    # so the tolerances above would catch a mix-up.
    paper, _ = run_ours(Adam(lr=lr, eps_convention="paper"), model, grads[:1])
    assert max_diff(jax.tree.leaves(paper), np_adam_keras(model, grads[:1], lr, b1, b2, eps)) > 1e-4


@pytest.mark.parametrize("convention", ["paper", "keras"])
def test_adam_uses_python_float_decays(model, grads, convention):
    # docs/parity-semantics.md pitfall 2: with b2 as a float32 array, 1 - b2 = 9.9998713e-4 instead of
    # float32(0.001), a 1.3e-5 relative change too small for the 100-step tests above to see, but
    # it measurably changes a whole epoch. After one step from m = v = 0 the moments are exactly
    # float32(1 - b1) * g and float32(1 - b2) * float32(g * g), one rounding each.
    opt = Adam(eps_convention=convention)
    _, state = opt.update(grads[0], opt.init(model), model)
    g = np.asarray(jax.tree.leaves(grads[0])[0])
    one_minus_b2 = np.float32(1 - 0.999)
    np.testing.assert_array_equal(np.asarray(jax.tree.leaves(state.v)[0]), (g * g) * one_minus_b2)
    np.testing.assert_array_equal(np.asarray(jax.tree.leaves(state.m)[0]), g * np.float32(1 - 0.9))
    assert one_minus_b2 != np.float32(1) - np.float32(0.999)  # the two really differ in float32


# ----------------------------------------------------------------------------- SGD

@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_matches_optax_sgd(model, grads, momentum):
    ours, state = run_ours(SGD(lr=0.5, momentum=momentum), model, grads)
    ref = run_optax(optax.sgd(0.5, momentum=momentum or None), model, grads)
    # Same expressions (m = g + momentum*m; p - lr*m): measured 0.0 after 100 jitted steps.
    assert max_diff(ours, ref) <= 1e-7
    assert int(state.t) == STEPS
    assert (state.momentum is None) == (momentum == 0.0)
    if momentum:  # with momentum the result differs from plain SGD (so momentum is really used)
        plain, _ = run_ours(SGD(lr=0.5), model, grads)
        assert max_diff(ours, plain) > 1e-4


def test_sgd_one_step_formula(model, grads):
    opt = SGD(lr=0.1)
    new, _ = opt.update(grads[0], opt.init(model), model)
    for p, g, q in zip(jax.tree.leaves(model), jax.tree.leaves(grads[0]), jax.tree.leaves(new)):
        np.testing.assert_array_equal(np.asarray(q), np.asarray(p - 0.1 * g))  # same float32 ops


# ----------------------------------------------------------------------------- stateful API

@pytest.mark.parametrize("make", [lambda m: Adam(m), lambda m: Adam(m, eps_convention="keras"),
                                  lambda m: SGD(m, lr=0.1, momentum=0.9)])
def test_stateful_step_equals_pure_update(model, grads, make):
    opt = make(model)
    assert opt.iterations == 0
    stepped = model
    for g in grads[:10]:
        stepped = opt.step(stepped, g)
    assert opt.iterations == 10
    pure, state = run_ours(make(None), model, grads[:10])
    assert max_diff(stepped, pure) == 0.0  # the same jitted function on the same inputs
    assert type(stepped) is Sequential and repr(stepped) == repr(model)
    assert max_diff(opt.state, state) == 0.0


def test_step_initialises_state_lazily(model, grads):
    opt = Adam()
    assert opt.state is None and opt.iterations == 0
    opt.step(model, grads[0])
    assert isinstance(opt.state, AdamState) and opt.iterations == 1
    sgd = SGD()
    sgd.step(model, grads[0])
    assert isinstance(sgd.state, SGDState)


def test_whole_training_step_jits_with_state_as_pytree(model):
    opt = Adam(lr=1e-2)
    x = jnp.asarray(np.random.default_rng(2).random((8, 8, 8, 1), dtype=np.float32))
    y = jnp.arange(8) % 10

    @jax.jit
    def train_step(params, state, x, y):
        def loss(params):
            z = params(x)
            return jnp.mean(jax.nn.logsumexp(z, axis=-1) - z[jnp.arange(len(y)), y])
        value, g = jax.value_and_grad(loss)(params)
        params, state = opt.update(g, state, params)
        return params, state, value

    params, state = model, opt.init(model)
    losses = []
    for _ in range(20):
        params, state, value = train_step(params, state, x, y)
        losses.append(float(value))
    assert int(state.t) == 20 and losses[-1] < losses[0]  # it learns a fixed batch


# ----------------------------------------------------------------------------- validation

def test_defaults_are_the_posts():
    opt = Adam()
    assert (opt.lr, opt.v_decay, opt.s_decay, opt.eps, opt.eps_convention) == (1e-3, 0.9, 0.999, 1e-7, "paper")
    assert (SGD().lr, SGD().momentum) == (1e-3, 0.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=0.0), "lr"), (dict(lr=-1e-3), "lr"), (dict(lr=float("nan")), "lr"), (dict(lr="0.1"), "lr"),
    (dict(v_decay=1.0), "v_decay"), (dict(v_decay=-0.1), "v_decay"), (dict(s_decay=1.5), "s_decay"),
    (dict(eps=-1e-8), "eps"), (dict(eps_convention="pytorch"), "eps_convention"),
])
def test_adam_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Adam(**kwargs)


@pytest.mark.parametrize("kwargs,match", [(dict(lr=0), "lr"), (dict(momentum=1.0), "momentum"),
                                          (dict(momentum=-0.5), "momentum")])
def test_sgd_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SGD(**kwargs)
