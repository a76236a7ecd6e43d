"""Where the libraries' defaults disagree numerically: `adam-epsilon` and `initialisers`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from fmnist.app.explain.common import figure, fmt, save

INIT_LABELS = {"lecun_normal": "Flax default: lecun_normal", "glorot_uniform": "Keras default: glorot_uniform",
               "he_normal": "the post (project default): he_normal"}


def adam_epsilon(out: Path, say) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from flax_impl.optimizers import keras_adam
    from handrolled.optimizers import Adam

    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-7
    effective = {t: eps / math.sqrt(1 - b2 ** t) for t in (1, 10, 100, 1000, 1875, 10000)}
    g = jnp.asarray(np.logspace(-10, -1, 181), jnp.float32)  # 20 points a decade
    p0 = jnp.zeros_like(g)
    step = {}
    for convention in ("keras", "paper"):
        opt = Adam(lr=lr, v_decay=b1, s_decay=b2, eps=eps, eps_convention=convention)
        new, _ = jax.jit(opt.update)(g, opt.init(p0), p0)
        step[convention] = -np.asarray(new, np.float64)
    for name, tx in (("optax.adam", optax.adam(lr, b1, b2, eps=eps)), ("keras_adam", keras_adam(lr, b1, b2, eps))):
        updates, _ = jax.jit(tx.update)(g, tx.init(p0), p0)
        step[name] = -np.asarray(updates, np.float64)
    gap = np.abs(step["keras"] - step["paper"]) / lr
    worst = int(np.argmax(gap))
    decades = {f"1e{k}": 20 * (k + 10) for k in range(-8, -1)}  # indices of 1e-8 .. 1e-2 in g
    table = {d: {c: float(step[c][i] / lr) for c in ("keras", "paper")} for d, i in decades.items()}
    result = {"eps_paper_equivalent": effective, "first_step_over_lr": table,
              "max_gap_over_lr": float(gap[worst]), "max_gap_at_g": float(g[worst]),
              "optax_vs_paper": float(np.abs(step["optax.adam"] - step["paper"]).max()),
              "flax_keras_adam_vs_keras": float(np.abs(step["keras_adam"] - step["keras"]).max())}

    say(f"Keras puts eps_hat = {eps} on sqrt(v) before bias correction; the paper (optax.adam, PyTorch) adds eps "
        "to sqrt(v_hat). They agree only if eps_paper(t) = eps_hat / sqrt(1 - b2^t):")
    say("  " + ", ".join(f"t={t}: {fmt(e, 3)}" for t, e in effective.items()) + "  (-> eps_hat as t grows)")
    say(f"First step (t=1) of each weight, in units of lr = {lr}, for a gradient |g| (both with eps = {eps}):")
    say("  |g|     " + "".join(f"{d:>9}" for d in table))
    for convention in ("keras", "paper"):
        say(f"  {convention:<7} " + "".join(f"{row[convention]:9.3f}" for row in table.values()))
    say(f"The two first steps differ by up to {fmt(gap[worst], 3)} x lr, at |g| = {fmt(g[worst], 2)}: the tiny "
        "gradients of rarely active weights. (At t=1 the step is lr*|g|/(|g| + eps_hat/sqrt(1-b2)) for Keras, "
        "lr*|g|/(|g| + eps) for the paper.) No constant eps turns one into the other.")
    say(f"Cross-checks: optax.adam vs the hand-rolled 'paper' Adam {fmt(result['optax_vs_paper'], 2)}; "
        "flax_impl.optimizers.keras_adam vs the hand-rolled 'keras' Adam "
        f"{fmt(result['flax_keras_adam_vs_keras'], 2)}.")

    fig, (ax_s, ax_e) = figure(2)
    gg = np.asarray(g)
    ax_s.semilogx(gg, step["keras"] / lr, linewidth=2.5, color="tab:green", label="Keras (eps_hat on sqrt(v))")
    ax_s.semilogx(gg, step["paper"] / lr, linewidth=1.5, linestyle="--", color="tab:orange",
                  label="paper / optax.adam (eps on sqrt(v_hat))")
    ax_s.semilogx(gg, gap, linewidth=1, linestyle=":", color="black", label="|difference|")
    ax_s.set(xlabel="|g| at the first step", ylabel="first step / lr", title=f"first Adam step, eps = {eps}")
    ax_s.legend(fontsize=8)
    ts = np.unique(np.logspace(0, 4, 200).astype(int))
    ax_e.loglog(ts, eps / np.sqrt(1 - b2 ** ts), color="tab:orange", label="eps_paper(t) equal to Keras's eps_hat")
    ax_e.axhline(eps, color="tab:green", linestyle="--", label=f"eps_hat = {eps}")
    ax_e.set(xlabel="step t", ylabel="epsilon", title="the paper's eps that would reproduce Keras")
    ax_e.legend(fontsize=8)
    result["picture"] = save(fig, out, "adam-epsilon", "Adam's epsilon: Keras's eps_hat vs the paper's eps")
    return result


def initialisers(out: Path, say) -> dict:
    import jax

    from fmnist.initializers import fans
    from fmnist.weights import KERNEL_SHAPES, init_weights

    shapes = KERNEL_SHAPES["cnn"]
    theory = {"lecun_normal": lambda fi, fo: math.sqrt(1 / fi),
              "glorot_uniform": lambda fi, fo: math.sqrt(2 / (fi + fo)),
              "he_normal": lambda fi, fo: math.sqrt(2 / fi)}
    drawn = {init: init_weights("cnn", init, seed=0) for init in theory}
    layers = {}
    for name, shape in shapes.items():
        fi, fo = fans(shape)
        layers[name] = {"shape": shape, "fan_in": fi, "fan_out": fo,
                        **{f"{init}_std": float(np.std(drawn[init][name]["kernel"])) for init in theory},
                        **{f"{init}_theory": f(fi, fo) for init, f in theory.items()}}
        layers[name]["flax_over_keras"] = layers[name]["lecun_normal_std"] / layers[name]["glorot_uniform_std"]
    key = jax.random.key(0)  # what Flax itself calls (flax.linen.initializers are jax.nn.initializers)
    jax_std = {f"{init}_{name}": float(np.std(np.asarray(getattr(jax.nn.initializers, init)()(key, shapes[name]))))
               for init in ("lecun_normal", "glorot_uniform") for name in ("conv_0", "dense_0")}

    say("Kernel std per layer of the CNN (sampled with seed 0 by fmnist.initializers; the formula in brackets):")
    say(f"  {'layer':<8}{'shape':<18}{'fan in/out':<13}" + "".join(f"{i:>24}" for i in theory) + "   Flax/Keras")
    for name, row in layers.items():
        cells = "".join(f"{fmt(row[f'{i}_std'], 3):>12} ({fmt(row[f'{i}_theory'], 3):>8})" for i in theory)
        say(f"  {name:<8}{str(row['shape']):<18}{row['fan_in']:>5}/{row['fan_out']:<7}{cells}   "
            f"{row['flax_over_keras']:.2f}x")
    say("  lecun_normal = truncated N(0, 1/fan_in); glorot_uniform = U(+-sqrt(6/(fan_in+fan_out))); "
        "he_normal = N(0, 2/fan_in) (the post's, untruncated).")
    say(f"jax.nn.initializers (what Flax calls): lecun_normal conv_0 {fmt(jax_std['lecun_normal_conv_0'], 3)}, "
        f"dense_0 {fmt(jax_std['lecun_normal_dense_0'], 4)}; "
        f"glorot_uniform conv_0 {fmt(jax_std['glorot_uniform_conv_0'], 3)}, "
        f"dense_0 {fmt(jax_std['glorot_uniform_dense_0'], 4)}: the same distributions, other samples.")
    say("Different RNGs draw different samples even from the same distribution, so the project draws one "
        "set of canonical weights (`--init`, default he_normal) and copies it into every implementation.")

    fig, (ax_b, ax_h) = figure(2)
    x = np.arange(len(layers))
    for k, init in enumerate(theory):
        ax_b.bar(x + (k - 1) * 0.27, [row[f"{init}_std"] for row in layers.values()], width=0.27,
                 label=INIT_LABELS[init])
    ax_b.set_xticks(x, [f"{n}\n{s}" for n, s in shapes.items()], fontsize=8)
    ax_b.set_yscale("log")
    ax_b.set(ylabel="kernel std", title="std of each layer's kernel")
    ax_b.legend(fontsize=8)
    for init in theory:
        ax_h.hist(drawn[init]["conv_1"]["kernel"].ravel(), bins=120, histtype="step", linewidth=1.5,
                  label=INIT_LABELS[init], density=True)
    ax_h.set(xlabel="weight value", ylabel="density", title=f"conv_1 kernel {shapes['conv_1']} values")
    ax_h.legend(fontsize=8)
    result = {"layers": layers, "jax_std": jax_std}
    result["picture"] = save(fig, out, "initialisers", "default initialisers: Flax, Keras and the post disagree")
    return result
