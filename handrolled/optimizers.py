"""SGD (with optional momentum) and Adam, in two interchangeable forms.

* **Pure**, for use inside `jax.jit`: `state = opt.init(params)` and
  `new_params, new_state = opt.update(grads, state, params)`. The state is a pytree
  (a NamedTuple of arrays, including the step count `t` as an int32 scalar), so a whole training
  step `(params, state, batch) -> (params, state)` can be compiled.
* **Stateful**, the post's API: `opt = Adam(model)`, then `model = opt.step(model, grads)`.
  `step` keeps the state on the optimizer and runs a jitted `update`; its results are
  identical to calling the jitted pure form yourself.

`params` can be any pytree: a `Sequential` model, or a dict. The hyperparameters are Python
floats held by the optimizer and become compile-time constants when `update` is traced, which
is what keeps Adam's 1 - b1 and 1 - b2 exact (see `Adam`). So treat an optimizer as immutable:
changing `opt.lr` later does not affect an already-compiled `update` or `step`; make a new one.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["SGD", "Adam", "SGDState", "AdamState", "EPS_CONVENTIONS"]

EPS_CONVENTIONS = ("paper", "keras")
_INT32_MAX = jnp.iinfo(jnp.int32).max


def _check_lr(lr) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"learning rate lr must be a finite number > 0, got {lr!r}")
    return float(lr)


def _check_decay(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _increment(t: jax.Array) -> jax.Array:
    # t + 1, saturating at the int32 maximum instead of wrapping to negative (as optax does).
    return jnp.where(t < _INT32_MAX, t + 1, _INT32_MAX).astype(jnp.int32)


class _Optimizer:
    """Shared stateful wrapper: `step(model, grads)` = jitted `update` + remembered state."""

    state: Any = None

    def __init__(self, model=None):
        self._jit_update = jax.jit(self.update)
        self.state = None if model is None else self.init(model)

    def init(self, params):  # pragma: no cover - overridden
        raise NotImplementedError

    def update(self, grads, state, params):  # pragma: no cover - overridden
        raise NotImplementedError

    def step(self, model, grads):
        """Apply one update to `model` with `grads` (same pytree structure); return the new model.

        The optimizer state is created from `model` on the first call if it was not given to
        the constructor, and updated in place on every call.
        """
        if self.state is None:
            self.state = self.init(model)
        new_model, self.state = self._jit_update(grads, self.state, model)
        return new_model

    @property
    def iterations(self) -> int:
        """Number of updates applied so far by `step` (the state's t)."""
        return 0 if self.state is None else int(self.state.t)


class SGDState(NamedTuple):
    t: jax.Array       # int32 scalar, number of updates applied
    momentum: Any      # pytree like params (the trace m), or None when momentum == 0


class SGD(_Optimizer):
    """Stochastic gradient descent, optionally with (heavy-ball) momentum.

    momentum == 0:  p <- p - lr * g
    momentum > 0:   m <- g + momentum * m;  p <- p - lr * m      (m starts at 0)

    This is `optax.sgd(lr, momentum)` (optax's `trace`), op for op. Keras's SGD is the same
    mathematically but keeps -lr inside its velocity (v <- momentum * v - lr * g; p <- p + v),
    so with momentum it differs from this by float32 rounding.
    """

    def __init__(self, model=None, lr: float = 1e-3, momentum: float = 0.0):
        self.lr = _check_lr(lr)
        self.momentum = _check_decay(momentum, "momentum")
        super().__init__(model)

    def init(self, params) -> SGDState:
        """Zero step count, and a zero momentum trace shaped like `params` (None if momentum == 0)."""
        trace = jax.tree.map(jnp.zeros_like, params) if self.momentum > 0 else None
        return SGDState(t=jnp.zeros([], jnp.int32), momentum=trace)

    def update(self, grads, state: SGDState, params):
        """One SGD step: returns (new_params, new_state). Pure; safe under jax.jit."""
        lr, mu = self.lr, self.momentum
        if mu > 0:
            trace = jax.tree.map(lambda g, m: g + mu * m, grads, state.momentum)
        else:
            trace = None
        direction = grads if trace is None else trace
        new_params = jax.tree.map(lambda p, d: p - lr * d, params, direction)
        return new_params, SGDState(t=_increment(state.t), momentum=trace)

    def __repr__(self) -> str:
        return f"SGD(lr={self.lr}, momentum={self.momentum})"


class AdamState(NamedTuple):
    t: jax.Array  # int32 scalar, number of updates applied (the next update is step t + 1)
    m: Any        # first moment, pytree like params (the post's `v`)
    v: Any        # second moment, pytree like params (the post's `s`)


class Adam(_Optimizer):
    """Adam (Kingma & Ba, 2015), with either placement of epsilon.

    Argument names follow the post: `v_decay` is beta_1 (decay of the mean of g), `s_decay` is
    beta_2 (decay of the mean of g*g). With step t = 1, 2, ..., m and v starting at 0:

    eps_convention="paper" (Algorithm 1 of the paper; `optax.adam(lr, b1, b2, eps)`; the post):
        m <- (1 - b1) * g + b1 * m
        v <- (1 - b2) * g*g + b2 * v
        m_hat = m / (1 - b1^t);  v_hat = v / (1 - b2^t)
        p <- p - lr * m_hat / (sqrt(v_hat) + eps)

    eps_convention="keras" ("epsilon hat", the formula just before section 2.1 of the paper;
    Keras's and TF's Adam), in exactly Keras's order of operations:
        alpha = lr * sqrt(1 - b2^t) / (1 - b1^t)     (b1^t, b2^t in float32, t cast to float32)
        m <- m + (g - m) * (1 - b1)
        v <- v + (g*g - v) * (1 - b2)
        p <- p - (m * alpha) / (sqrt(v) + eps)

    The two are equal only if eps_paper = eps_keras / sqrt(1 - b2^t), which changes with t, so no
    constant converts one into the other: with eps = 1e-7 one step differs by up to 0.7 * lr for
    weights whose gradients are ~1e-6 (docs/parity-semantics.md section 1). Use "keras" to reproduce
    Keras, "paper" to reproduce optax. Measured against `keras.optimizers.Adam` (TF backend, same
    100 random gradients on a small CNN): "keras" is 0.0 away after 1 step and 3.0e-8 after 100;
    "paper" is 8.6e-3 away after 100. b1 and b2 stay Python floats: as float32 arrays,
    1 - 0.999 becomes 9.9998713e-4 instead of float32(0.001), which measurably changes training.

    The post's defaults are kept (lr=1e-3, 0.9, 0.999, eps=1e-7, its "paper" formula); note
    optax's default eps is 1e-8.
    """

    def __init__(self, model=None, lr: float = 1e-3, v_decay: float = 0.9, s_decay: float = 0.999,
                 eps: float = 1e-7, eps_convention: str = "paper"):
        self.lr = _check_lr(lr)
        self.v_decay = _check_decay(v_decay, "v_decay (beta_1)")
        self.s_decay = _check_decay(s_decay, "s_decay (beta_2)")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        self.eps = float(eps)
        if eps_convention not in EPS_CONVENTIONS:
            raise ValueError(f"eps_convention must be one of {EPS_CONVENTIONS}, got {eps_convention!r}")
        self.eps_convention = eps_convention
        super().__init__(model)

    def init(self, params) -> AdamState:
        """Zero step count and zero moments m, v shaped like `params`."""
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)
        return AdamState(t=jnp.zeros([], jnp.int32), m=zeros(), v=zeros())

    def update(self, grads, state: AdamState, params):
        """One Adam step: returns (new_params, new_state). Pure; safe under jax.jit."""
        if self.eps_convention == "paper":
            return self._update_paper(grads, state, params)
        return self._update_keras(grads, state, params)

    def _update_paper(self, grads, state, params):
        # Same expressions, in the same order, as optax.scale_by_adam + scale_by_learning_rate +
        # apply_updates, so results match optax.adam bit for bit when both are jitted (tested).
        lr, b1, b2, eps = self.lr, self.v_decay, self.s_decay, self.eps
        t = _increment(state.t)
        m = jax.tree.map(lambda g, m: (1 - b1) * g + b1 * m, grads, state.m)
        v = jax.tree.map(lambda g, v: (1 - b2) * (g * g) + b2 * v, grads, state.v)
        bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t  # float32 scalars (Python float ** int32)
        new_params = jax.tree.map(
            lambda p, m, v: p - lr * ((m / bc1.astype(m.dtype)) / (jnp.sqrt(v / bc2.astype(v.dtype)) + eps)),
            params, m, v)
        return new_params, AdamState(t=t, m=m, v=v)

    def _update_keras(self, grads, state, params):
        # keras/src/optimizers/adam.py, update_step: lr, t and the powers are float32 scalars,
        # while (1 - b1), (1 - b2) and eps are Python floats (rounded to float32 when used).
        lr, b1, b2, eps = self.lr, self.v_decay, self.s_decay, self.eps
        t = _increment(state.t)
        tf32 = t.astype(jnp.float32)
        b1_power = jnp.power(jnp.float32(b1), tf32)
        b2_power = jnp.power(jnp.float32(b2), tf32)
        alpha = jnp.float32(lr) * jnp.sqrt(1 - b2_power) / (1 - b1_power)
        m = jax.tree.map(lambda g, m: m + (g - m) * (1 - b1), grads, state.m)
        v = jax.tree.map(lambda g, v: v + (g * g - v) * (1 - b2), grads, state.v)
        new_params = jax.tree.map(
            lambda p, m, v: p - (m * alpha.astype(m.dtype)) / (jnp.sqrt(v) + eps), params, m, v)
        return new_params, AdamState(t=t, m=m, v=v)

    def __repr__(self) -> str:
        return (f"Adam(lr={self.lr}, v_decay={self.v_decay}, s_decay={self.s_decay}, eps={self.eps}, "
                f"eps_convention={self.eps_convention!r})")
