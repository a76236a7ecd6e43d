"""Cross-entropy losses and accuracy.

Two families, both with the post's argument order `(y_true, prediction)`:

* On **probabilities** (the post's API): `cross_entropy(y_true_onehot, probs)` and
  `sparse_cross_entropy(y_true, probs)`. Probabilities are clipped to [PROB_EPS, 1] before the log.
* On **logits** (what the models return, and what training uses):
  `cross_entropy_with_logits(y_onehot, logits)` and `sparse_cross_entropy_with_logits(labels, logits)`,
  computed through log-softmax, stable for any finite logits and never clipped.

Why train on logits: once softmax underflows to 0 in float32 (a logit gap above ~104), the
probability form can only return a capped loss with zero gradient for that sample, so a
confidently wrong prediction stops being corrected. The logit form returns the exact loss
(e.g. 2000 for logits [1000, 0, -1000] and label 2) and the exact gradient softmax(z) - onehot(y).

Every loss takes `reduction`: "mean" (default, the mean over the batch, as Keras's
"sum_over_batch_size" and the post), "sum", or "none" (one loss per example).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from handrolled.functional import log_softmax, logsumexp

__all__ = [
    "PROB_EPS", "cross_entropy", "sparse_cross_entropy", "cross_entropy_with_logits",
    "sparse_cross_entropy_with_logits", "num_correct", "accuracy",
]

# Smallest probability the probability-form losses take the log of. This is Keras's
# `backend.epsilon()`, and it means something in float32: -log(1e-7) = 16.12 caps the loss of a
# sample whose predicted probability underflowed to 0. The post used `jnp.finfo(jnp.float64).eps`
# (2.2e-16) *added* to p: in float32 `p + 2.2e-16 == p` for every p above ~3.7e-9, so it did
# nothing except at p == 0 exactly, where it gave loss 36.0 and a gradient of 1/2.2e-16 = 4.5e15.
PROB_EPS = 1e-7

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(per_example: jax.Array, reduction: str) -> jax.Array:
    if reduction == "mean":
        return jnp.mean(per_example)
    if reduction == "sum":
        return jnp.sum(per_example)
    if reduction == "none":
        return per_example
    raise ValueError(f"unknown reduction {reduction!r}; choose one of {', '.join(_REDUCTIONS)}")


def _take_label(values: jax.Array, labels: jax.Array) -> jax.Array:
    """values[i, labels[i]] for each row i (the post's `values[arange(n), labels]`)."""
    labels = jnp.asarray(labels).astype(jnp.int32)
    return jnp.take_along_axis(values, labels[:, None], axis=-1)[:, 0]


def _safe_log(probs: jax.Array) -> jax.Array:
    # Clipping, unlike the post's `+ eps`, leaves every p >= PROB_EPS unchanged and bounds the
    # loss; a clipped entry gets zero gradient (as in Keras's probability losses).
    return jnp.log(jnp.clip(probs, min=PROB_EPS, max=1.0))


def cross_entropy(y_true: jax.Array, probs: jax.Array, reduction: str = "mean") -> jax.Array:
    """Categorical cross-entropy on probabilities: mean_i ( -sum_k y[i,k] * log(clip(p[i,k], eps, 1)) ).

    `y_true` is one-hot (or any distribution) with the shape of `probs`; eps = PROB_EPS = 1e-7.
    Fixes the post's `log(p + float64_eps)` (see PROB_EPS). Unlike Keras's from_logits=False
    path, `probs` is not renormalised and not clipped at 1 - eps, so a perfect prediction
    scores exactly 0.
    """
    probs = jnp.asarray(probs)
    per_example = -jnp.sum(jnp.asarray(y_true, probs.dtype) * _safe_log(probs), axis=-1)
    return _reduce(per_example, reduction)


def sparse_cross_entropy(y_true: jax.Array, probs: jax.Array, reduction: str = "mean") -> jax.Array:
    """Cross-entropy with integer labels on probabilities: mean_i ( -log(clip(p[i, y_i], eps, 1)) ).

    Same clipping as `cross_entropy` (eps = PROB_EPS = 1e-7), so the loss per example is at
    most -log(1e-7) = 16.12 and a probability of exactly 0 is safe.
    """
    per_example = -_take_label(_safe_log(jnp.asarray(probs)), y_true)
    return _reduce(per_example, reduction)


def cross_entropy_with_logits(y_true: jax.Array, logits: jax.Array, reduction: str = "mean") -> jax.Array:
    """Categorical cross-entropy on logits: mean_i ( -sum_k y[i,k] * log_softmax(z)[i,k] ).

    For one-hot y this equals logsumexp(z_i) - z[i, y_i]. Stable for any finite logits
    (same formula as `optax.softmax_cross_entropy`).
    """
    logits = jnp.asarray(logits)
    per_example = -jnp.sum(jnp.asarray(y_true, logits.dtype) * log_softmax(logits), axis=-1)
    return _reduce(per_example, reduction)


def sparse_cross_entropy_with_logits(y_true: jax.Array, logits: jax.Array,
                                     reduction: str = "mean") -> jax.Array:
    """Cross-entropy with integer labels on logits: mean_i ( logsumexp(z_i) - z[i, y_i] ).

    logsumexp is computed as m + log(sum_j exp(z_j - m)), so it is finite for any finite
    logits; its gradient with respect to z is softmax(z) - onehot(y). Same formula as
    `optax.softmax_cross_entropy_with_integer_labels` and TF's fused sparse op.
    """
    logits = jnp.asarray(logits)
    per_example = logsumexp(logits, axis=-1) - _take_label(logits, y_true)
    return _reduce(per_example, reduction)


def num_correct(y_true: jax.Array, outputs: jax.Array) -> jax.Array:
    """Number of rows whose argmax equals the label: sum_i [argmax_k out[i,k] == y_i] (int32).

    Works on logits or probabilities (softmax preserves the argmax).
    """
    return jnp.sum(jnp.argmax(outputs, axis=-1) == jnp.asarray(y_true)).astype(jnp.int32)


def accuracy(y_true: jax.Array, outputs: jax.Array) -> jax.Array:
    """Fraction of rows whose argmax equals the label: num_correct / batch_size (float32)."""
    return num_correct(y_true, outputs) / jnp.shape(outputs)[0]
