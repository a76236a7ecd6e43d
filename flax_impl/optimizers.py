"""Optax optimizers for a `TrainConfig`, including an Adam that reproduces Keras's op for op.

Two Adams, same hyper-parameter names, different algorithms (docs/parity-semantics.md §1):

  "paper" (Kingma & Ba Algorithm 1; `optax.adam`, PyTorch):
      m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2;  m_hat = m/(1-b1^t);  v_hat = v/(1-b2^t)
      theta -= lr * m_hat / (sqrt(v_hat) + eps)

  "keras" (Kingma & Ba's "efficient version" before §2.1, with epsilon-hat; Keras's only form):
      alpha = lr * sqrt(1-b2^t) / (1-b1^t)
      m += (g - m)*(1-b1);  v += (g^2 - v)*(1-b2)
      theta -= alpha * m / (sqrt(v) + eps_hat)

Multiplying the paper's update through by sqrt(1-b2^t) shows they agree exactly when
eps_paper(t) = eps_hat / sqrt(1 - b2^t): 3.2e-6 at t=1, 3.2e-7 at t=100, -> eps_hat as t grows.
So `optax.adam(lr, eps=1e-7)` is NOT Keras's `Adam(epsilon=1e-7)`: its epsilon is effectively up to
sqrt(1000) = 32x smaller early on, which matters for weights whose gradients are tiny (|g| ~ 1e-6
moves 0.7*lr further on the first step). No constant eps fixes that, hence `keras_adam` below.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fmnist.config import TrainConfig


class KerasAdamState(NamedTuple):
    count: jnp.ndarray  # int32 scalar: steps taken so far (Keras's `iterations`)
    mu: optax.Updates   # first moment m
    nu: optax.Updates   # second moment v


def keras_adam(learning_rate: float, b1: float = 0.9, b2: float = 0.999,
               eps: float = 1e-7) -> optax.GradientTransformation:
    """Adam exactly as `keras.optimizers.Adam.update_step` computes it (keras/src/optimizers/adam.py).

    Same formulas *and* same float32 op order. Measured against Keras 3.15 (TF backend) on identical
    gradients: bit-identical after 1 step, 1.5e-8 after 10, 3.0e-8 after 100. The remaining float32
    rounding is not the formula: XLA:CPU fuses `m + (g - m) * (1 - b1)` into one fused multiply-add
    (one rounding instead of TF's two; differs on 11% of elements), and XLA, TF and NumPy round
    `b ** t` differently in the last bit for some t.

        t = float32(count + 1);  alpha = (lr * sqrt(1 - b2**t)) / (1 - b1**t)
        m = m + (g - m) * (1 - b1);  v = v + (g*g - v) * (1 - b2)
        update = -((m * alpha) / (sqrt(v) + eps))

    `b1`, `b2`, `eps`, `learning_rate` are kept as Python floats: `1 - b1` is then computed in float64
    and rounded once to float32, as Keras does. (As float32 arrays, e.g. through
    `optax.inject_hyperparams` without `static_args`, `1 - 0.999f` = 9.9998713e-4, not 1e-3, and an
    epoch of training drifts by O(0.1) in the parameters.) The learning rate sits inside `alpha`
    rather than in a separate `optax.scale(-lr)`, because Keras multiplies `m * alpha` before dividing.
    """
    b1, b2, eps, learning_rate = float(b1), float(b2), float(eps), float(learning_rate)

    def init_fn(params):
        return KerasAdamState(count=jnp.zeros([], jnp.int32), mu=jax.tree.map(jnp.zeros_like, params),
                              nu=jax.tree.map(jnp.zeros_like, params))

    def update_fn(grads, state, params=None):
        del params
        count = state.count + 1
        t = count.astype(jnp.float32)  # Keras: cast(iterations + 1, variable.dtype)
        beta_1_power = jnp.power(jnp.float32(b1), t)
        beta_2_power = jnp.power(jnp.float32(b2), t)
        alpha = learning_rate * jnp.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        mu = jax.tree.map(lambda m, g: m + (g - m) * (1 - b1), state.mu, grads)
        nu = jax.tree.map(lambda v, g: v + (jnp.square(g) - v) * (1 - b2), state.nu, grads)
        updates = jax.tree.map(lambda m, v: -((m * alpha) / (jnp.sqrt(v) + eps)), mu, nu)
        return updates, KerasAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The optax transformation for `config`.

    sgd:   `optax.sgd(lr, momentum or None)`: with momentum, t = g + mu*t; theta -= lr*t (Keras writes
           the same as v = mu*v - lr*g; theta += v, equal up to float32 rounding).
    adam:  "paper" -> `optax.adam(lr, b1, b2, eps=adam_eps)`; "keras" -> `keras_adam(...)`.
    """
    if config.optimizer == "sgd":
        return optax.sgd(config.lr, momentum=config.momentum or None)
    if config.optimizer == "adam":
        if config.adam_convention == "paper":
            return optax.adam(config.lr, b1=config.b1, b2=config.b2, eps=config.adam_eps)
        if config.adam_convention == "keras":
            return keras_adam(config.lr, b1=config.b1, b2=config.b2, eps=config.adam_eps)
        raise ValueError(f"unknown adam convention {config.adam_convention!r}")
    raise ValueError(f"unknown optimizer {config.optimizer!r}")
