"""Subgradients at kinks, on a real batch: `relu-derivative` (relu'(0)) and `maxpool-ties`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from fmnist.app.explain.common import (MACHINE, canonical_weights, figure, fmt, import_keras, log_bars, real_batch,
                                       save)

BATCH = 256  # real training images; the CNN holds the canonical he_normal weights of seed 0 (zero biases)


def _tensorflow():
    """TensorFlow (imported through Keras, which filters its banner), or None if not installed."""
    if importlib.util.find_spec("tensorflow") is None:
        return None
    import_keras()
    import tensorflow as tf

    return tf


def _param_grads(model, x, y) -> dict[str, np.ndarray]:
    """{"conv_0/kernel": gradient, ...} of the mean cross-entropy of (x, y) at `model`'s weights."""
    import jax

    from handrolled.losses import sparse_cross_entropy_with_logits
    from handrolled.models import to_weights

    grads = jax.jit(jax.grad(lambda m: sparse_cross_entropy_with_logits(y, m(x))))(model)
    return {f"{layer}/{k}": v for layer, params in to_weights(grads).items() for k, v in params.items()}


def _max_diffs(a: dict, b: dict) -> dict[str, float]:
    return {name: float(np.max(np.abs(a[name].astype(np.float64) - b[name]))) for name in a}


def relu_derivative(out: Path, say) -> dict:
    import jax
    import jax.numpy as jnp

    from handrolled.functional import relu
    from handrolled.layers import Function, Sequential
    from handrolled.models import from_weights

    at_zero = {"jax.nn.relu (Flax)": float(jax.grad(jax.nn.relu)(0.0)),
               "handrolled relu (custom JVP)": float(jax.grad(relu)(0.0)),
               "jnp.maximum(x, 0)": float(jax.grad(lambda x: jnp.maximum(x, 0.0))(0.0)),
               "jnp.clip(x, min=0) (the post's, autodiff)": float(jax.grad(lambda x: jnp.clip(x, min=0))(0.0))}
    tf = _tensorflow()
    if tf is not None:
        v = tf.Variable(0.0)
        with tf.GradientTape() as tape:
            r = tf.nn.relu(v)
        at_zero["tf.nn.relu (Keras on TF)"] = float(tape.gradient(r, v).numpy())

    x, y = real_batch(BATCH)
    model = from_weights("cnn", canonical_weights(), pool_impl="first_max")
    pre, h = {}, jnp.asarray(x)
    names = iter(("conv_0", "conv_1", "dense_0"))
    for layer in model.layers:
        if isinstance(layer, Function):
            pre[next(names)] = np.asarray(h)
        h = layer(h)
    zeros = {name: float(np.mean(p == 0)) for name, p in pre.items()}
    black = float(np.mean(x == 0))
    clip_relu = lambda x: jnp.clip(x, min=0)  # noqa: E731  relu'(0) = 0.5 under autodiff
    half = Sequential(*[Function(clip_relu) if isinstance(layer, Function) else layer for layer in model.layers])
    g0, g_half = _param_grads(model, x, y), _param_grads(half, x, y)
    diffs = _max_diffs(g0, g_half)
    result = {"grad_at_zero": at_zero, "tensorflow": tf is not None, "zero_preactivations": zeros,
              "black_pixels": black, "grad_diff_half_vs_zero": diffs,
              "max_abs_grad": max(float(np.abs(g).max()) for g in g0.values())}

    say("d relu / dx at x = 0:")
    for name, value in at_zero.items():
        say(f"  {name:<42} {value}")
    if tf is None:
        say("  (TensorFlow not installed: tf.nn.relu not checked)")
    say(f"Why it matters here: {100 * black:.1f}% of the pixels of {BATCH} real training images are exactly 0 "
        "(black background), and with zero biases a conv over a blank patch gives a pre-activation of exactly 0:")
    for name, frac in zeros.items():
        say(f"  {name:<8} {100 * frac:5.1f}% of pre-activations are exactly 0")
    say("Gradients of the batch loss with relu'(0) = 0.5 instead of 0, max |difference| "
        f"(max |g| = {fmt(result['max_abs_grad'], 3)}):")
    say("  " + ", ".join(f"{name} {fmt(d, 3)}" for name, d in diffs.items()))
    say("Not rounding, a different gradient: the kernels' are unchanged (a blank patch multiplies its "
        "gradient by 0), the biases' are not. So the hand-rolled relu defines relu'(0) = 0, as jax.nn.relu "
        "and tf.nn.relu do; the post's clip-relu would train differently from Flax and Keras.")

    fig, (ax_i, ax_z, ax_d) = figure(3, width=16)
    ax_i.imshow(x[0, :, :, 0], cmap="gray")
    from matplotlib.colors import ListedColormap

    ax_i.imshow(np.ma.masked_where(pre["conv_0"][0, :, :, 0] != 0, np.ones((28, 28))),
                cmap=ListedColormap(["red"]), alpha=0.5)
    ax_i.set(title="image 0; red: conv_0 channel 0 pre-activation == 0", xticks=[], yticks=[])
    ax_z.bar(["black pixels", *zeros], [100 * black, *(100 * f for f in zeros.values())],
             color=["tab:gray", "tab:blue", "tab:blue", "tab:blue"])
    ax_z.set(ylabel="% exactly 0", title=f"exact zeros in a batch of {BATCH} real images")
    log_bars(ax_d, diffs, diffs.values(), color="tab:red")
    ax_d.set(ylabel="max |difference|", title="gradient with relu'(0)=0.5 minus relu'(0)=0")
    result["picture"] = save(fig, out, "relu-derivative", "relu'(0): a convention that real images exercise")
    return result


def _window_stats(a: np.ndarray) -> dict[str, float]:
    """Fractions of the 2x2/2 pooling windows of `a` (NHWC) with a unique max, tied at 0, tied above 0."""
    n, h, w, c = a.shape
    win = a.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(-1, 4)
    top = win.max(axis=1)
    ties = (win == top[:, None]).sum(axis=1) > 1
    return {"unique": float(np.mean(~ties)), "tied_at_0": float(np.mean(ties & (top == 0))),
            "tied_above_0": float(np.mean(ties & (top > 0)))}


def maxpool_ties(out: Path, say) -> dict:
    import jax
    import jax.numpy as jnp

    from fmnist.fastpath.layers import max_pool_2x2
    from handrolled.conv import max_pool2d_reduce_window, max_pool2d_reshape
    from handrolled.models import from_weights

    pools = {"first max (fast path)": max_pool_2x2,
             "reduce_window (nn.max_pool)": lambda a: max_pool2d_reduce_window(a, 2),
             "split evenly (reshape + jnp.max)": lambda a: max_pool2d_reshape(a, 2)}
    pool_grad = lambda pool, a: np.asarray(jax.jit(jax.grad(lambda a: jnp.sum(pool(a))))(a))  # noqa: E731
    window = jnp.full((1, 2, 2, 1), 0.5, jnp.float32)
    example = {name: pool_grad(pool, window)[0, :, :, 0].tolist() for name, pool in pools.items()}
    tf = _tensorflow()
    if tf is not None:
        v = tf.Variable(np.asarray(window))
        with tf.GradientTape() as tape:
            s = tf.reduce_sum(tf.nn.max_pool2d(v, 2, 2, "VALID"))
        example["TF MaxPool (Keras)"] = tape.gradient(s, v).numpy()[0, :, :, 0].tolist()

    x, y = real_batch(BATCH)
    weights = canonical_weights()
    layers = from_weights("cnn", weights, pool_impl="first_max").layers
    a0 = np.asarray(layers[1](layers[0](jnp.asarray(x))))          # relu(conv_0), the first pool's input
    a1 = np.asarray(layers[4](layers[3](layers[2](jnp.asarray(a0)))))  # relu(conv_1), the second's
    stats = {"pool_0": _window_stats(a0), "pool_1": _window_stats(a1)}
    dx = {name: pool_grad(pool, jnp.asarray(a0)) for name, pool in pools.items()}
    first, split = dx["first max (fast path)"], dx["split evenly (reshape + jnp.max)"]
    input_grad = {"reduce_window_vs_first_max": float(np.abs(dx["reduce_window (nn.max_pool)"] - first).max()),
                  "split_vs_first_max": float(np.abs(split - first).max()),
                  "pixels_differing": float(np.mean(split != first))}
    if tf is not None:
        v = tf.Variable(a0)
        with tf.GradientTape() as tape:
            s = tf.reduce_sum(tf.nn.max_pool2d(v, 2, 2, "VALID"))
        input_grad["tf_vs_first_max"] = float(np.abs(tape.gradient(s, v).numpy() - first).max())
    grads = {impl: _param_grads(from_weights("cnn", weights, pool_impl=impl), x, y)
             for impl in ("first_max", "reduce_window", "reshape")}
    param = {"reduce_window_vs_first_max": _max_diffs(grads["reduce_window"], grads["first_max"]),
             "split_vs_first_max": _max_diffs(grads["reshape"], grads["first_max"])}
    result = {"example_window_grad": example, "windows": stats, "input_grad": input_grad, "param_grad": param,
              "max_abs_grad": max(float(np.abs(g).max()) for g in grads["first_max"].values()),
              "tensorflow": tf is not None}

    say("Gradient of sum(max_pool(x)) for one 2x2 window of four equal values (0.5):")
    for name, g in example.items():
        say(f"  {name:<34} {g}")
    say(f"Real batch ({BATCH} images, canonical CNN): share of 2x2 pooling windows")
    for pool, s in stats.items():
        say(f"  {pool}: unique max {100 * s['unique']:.2f}%, tied at 0 {100 * s['tied_at_0']:.2f}%, "
            f"tied above 0 {100 * s['tied_above_0']:.3f}%")
    say(f"Gradient wrt the first pool's input: split-evenly vs first-max differ by up to "
        f"{fmt(input_grad['split_vs_first_max'], 3)} on {100 * input_grad['pixels_differing']:.1f}% of the pixels; "
        f"reduce_window vs first-max {fmt(input_grad['reduce_window_vs_first_max'], 3)}"
        + (f", TF vs first-max {fmt(input_grad['tf_vs_first_max'], 3)}." if tf is not None else "."))
    worst = max(param["split_vs_first_max"].values())
    say(f"Parameter gradients of the batch loss (max |g| = {fmt(result['max_abs_grad'], 3)}): split-evenly vs "
        f"first-max at most {fmt(worst, 3)}, reduce_window vs first-max at most "
        f"{fmt(max(param['reduce_window_vs_first_max'].values()), 3)} {MACHINE}.")
    say("Ties at 0 sit behind relu'(0) = 0, and ties above 0 come from identical (flat) patches, so both "
        "rules give the same parameter gradient up to float32 rounding; that rounding is still where two "
        "long trainings part (`fmnist explain chaos`).")

    fig, (ax_w, ax_g) = figure(2)
    cats = ("unique", "tied_at_0", "tied_above_0")
    xs = np.arange(len(cats))
    for k, (pool, s) in enumerate(stats.items()):
        bars = ax_w.bar(xs + (k - 0.5) * 0.4, [100 * s[c] for c in cats], width=0.4, label=f"{pool} input")
        ax_w.bar_label(bars, [f"{100 * s[c]:.3g}%" for c in cats], fontsize=7)
    ax_w.set_yscale("log")
    ax_w.set_xticks(xs, ["unique max", "tied at 0", "tied above 0"])
    ax_w.set(ylabel="% of windows", title=f"2x2 windows in a real batch of {BATCH}")
    ax_w.legend(fontsize=8)
    names = ["pool input", *param["split_vs_first_max"]]
    values = [input_grad["split_vs_first_max"], *param["split_vs_first_max"].values()]
    log_bars(ax_g, names, values, color=["tab:orange"] + ["tab:blue"] * (len(names) - 1))
    ax_g.set(ylabel="max |difference|", title="split-evenly minus first-max gradients")
    result["picture"] = save(fig, out, "maxpool-ties", "max-pool gradients at tied windows")
    return result
