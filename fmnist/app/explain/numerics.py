"""Float32 arithmetic pitfalls: `softmax-overflow` and `pixel-scaling`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmnist.app.explain.common import figure, fmt, raw_train_images, save

POST_EPS = float(np.finfo(np.float64).eps)  # what the post added to p before the log: 2.2e-16


def softmax_overflow(out: Path, say) -> dict:
    import jax
    import jax.numpy as jnp

    from handrolled.functional import log_softmax, softmax
    from handrolled.losses import PROB_EPS, sparse_cross_entropy, sparse_cross_entropy_with_logits

    z = jnp.array([[1000.0, 0.0, -1000.0]], jnp.float32)
    naive_softmax = lambda z: jnp.exp(z) / jnp.sum(jnp.exp(z), axis=-1, keepdims=True)  # noqa: E731
    naive = np.asarray(naive_softmax(z))[0]
    stable, logp = np.asarray(softmax(z))[0], np.asarray(log_softmax(z))[0]
    label = jnp.array([2])
    post = lambda z, y: -jnp.log(softmax(z)[jnp.arange(len(y)), y] + POST_EPS).mean()  # noqa: E731
    with np.errstate(divide="ignore", invalid="ignore"):
        naive_logs = -np.log(naive)
    losses = {
        "naive -log(p), label 0": float(naive_logs[0]),
        "naive -log(p), label 2": float(naive_logs[2]),
        "post -log(p + 2.2e-16), label 2": float(post(z, label)),
        "clipped -log(clip(p, 1e-7, 1)), label 2": float(sparse_cross_entropy(label, softmax(z))),
        "from logits, label 2": float(sparse_cross_entropy_with_logits(label, z)),
    }
    grad_post = np.asarray(jax.grad(post)(z, label))[0]
    grad_logits = np.asarray(jax.grad(lambda z: sparse_cross_entropy_with_logits(label, z))(z))[0]
    # p + eps == p in float32 for every p >= 2**-28: eps is at most half an ulp of p.
    p_ignored = next(2.0 ** -k for k in range(60) if np.float32(2.0 ** -(k + 1)) + np.float32(POST_EPS)
                     != np.float32(2.0 ** -(k + 1)))

    # Loss of the wrong class as its competitor's logit grows: logits [g, 0], label 1; exact = log(1 + e^g).
    gaps = np.linspace(0.0, 200.0, 801, dtype=np.float32)
    zz = jnp.stack([gaps, jnp.zeros_like(gaps)], axis=1)
    y1 = jnp.ones(len(gaps), jnp.int32)
    per = {"from logits (exact)": sparse_cross_entropy_with_logits(y1, zz, reduction="none"),
           "naive softmax, -log p": -jnp.log(naive_softmax(zz)[:, 1]),
           "stable softmax, -log p": -jnp.log(softmax(zz)[:, 1]),
           "post: -log(p + 2.2e-16)": -jnp.log(softmax(zz)[:, 1] + POST_EPS),
           "clipped at 1e-7 (Keras probs)": sparse_cross_entropy(y1, softmax(zz), reduction="none")}
    per = {k: np.asarray(v) for k, v in per.items()}
    first_bad = lambda v: float(gaps[np.argmax(~np.isfinite(v))]) if (~np.isfinite(v)).any() else None  # noqa: E731
    naive_inf_at, log_inf_at = first_bad(per["naive softmax, -log p"]), first_bad(per["stable softmax, -log p"])
    with np.errstate(divide="ignore", over="ignore", under="ignore"):  # NumPy keeps subnormals
        e = np.exp(-gaps)
        numpy_log_inf_at = first_bad(-np.log(e / (np.float32(1) + e)))
    grad_of = lambda f: np.asarray(jax.vmap(jax.grad(lambda z, y: f(z[None], y[None])))(zz, y1))[:, 0]  # noqa: E731
    grads = {"from logits (exact)": grad_of(lambda z, y: sparse_cross_entropy_with_logits(y, z)),
             "post: -log(p + 2.2e-16)": grad_of(post),
             "clipped at 1e-7 (Keras probs)": grad_of(lambda z, y: sparse_cross_entropy(y, softmax(z)))}

    say(f"Logits [1000, 0, -1000] in float32 (exp overflows above {fmt(float(np.log(np.finfo(np.float32).max)))}):")
    say(f"  naive exp(z)/sum(exp(z))  = {naive}   (inf/inf = nan)")
    say(f"  max-subtracted softmax    = {stable}")
    say(f"  log_softmax               = {logp}   (finite: z - logsumexp(z))")
    for name, value in losses.items():
        say(f"  loss, {name:<40} {fmt(value)}")
    say(f"  gradient wrt the logits: from logits {grad_logits}, post's log(p + eps) {grad_post}")
    say(f"The post's eps = 2.2e-16 is a float64 epsilon: in float32 p + eps == p for every p >= {fmt(p_ignored)}, "
        f"so it only acts where p has (nearly) underflowed to 0; there it caps the loss at "
        f"{fmt(losses['post -log(p + 2.2e-16), label 2'])} with zero gradient: a confidently wrong sample "
        "is never corrected.")
    say(f"Logits [g, 0], label 1: in JAX the naive loss is inf from g = {fmt(naive_inf_at)}, -log(stable "
        f"softmax) from g = {fmt(log_inf_at)} (p underflows to 0); the loss from logits stays exact (= g). "
        f"NumPy, which keeps subnormal floats, reaches inf only at g = {fmt(numpy_log_inf_at)}: XLA:CPU flushes "
        "subnormals to zero (machine- and compiler-dependent). "
        f"The probability losses' clip (PROB_EPS = {PROB_EPS}) caps the loss at {fmt(-np.log(np.float32(PROB_EPS)))}, "
        "the post's eps at 36.04, and both then have zero gradient (right panel).")

    fig, (ax_l, ax_g) = figure(2)
    styles = ["-", "--", ":", "-.", (0, (5, 1))]
    for (name, v), style in zip(per.items(), styles):
        ax_l.plot(gaps, np.where(np.isfinite(v), v, np.nan), linestyle=style, linewidth=2, label=name)
    marks = {naive_inf_at: "naive: inf"}
    marks[log_inf_at] = "naive and log(softmax): inf" if log_inf_at == naive_inf_at else "log(softmax): inf"
    for where, text in marks.items():
        if where is not None:
            ax_l.axvline(where, color="gray", linewidth=0.8)
            ax_l.text(where + 2, 30, text, fontsize=8, color="gray", rotation=90, va="bottom")
    ax_l.set(xlabel="logit gap g (logits [g, 0], true class 1)", ylabel="loss", title="loss (missing = inf/nan)")
    ax_l.legend(fontsize=8)
    for (name, v), style in zip(grads.items(), styles):
        ax_g.plot(gaps, v, linestyle=style, linewidth=2, label=name)
    ax_g.set(xlabel="logit gap g", ylabel="d loss / d z_0", title="gradient wrt the wrong logit")
    ax_g.legend(fontsize=8)
    picture = save(fig, out, "softmax-overflow", "softmax in float32: subtract the max, and take losses from logits")
    return {"naive_softmax": naive.tolist(), "stable_softmax": stable.tolist(), "log_softmax": logp.tolist(),
            "losses": losses, "grad_post": grad_post.tolist(), "grad_logits": grad_logits.tolist(),
            "post_eps_ignored_from": p_ignored, "naive_inf_from_gap": naive_inf_at,
            "log_softmax_inf_from_gap": log_inf_at, "numpy_log_softmax_inf_from_gap": numpy_log_inf_at,
            "picture": picture}


def pixel_scaling(out: Path, say) -> dict:
    import jax

    from fmnist.data import preprocess

    v = np.arange(256, dtype=np.float32)
    div = v / np.float32(255.0)                       # IEEE division, what fmnist.data.preprocess does
    mul = v * np.float32(1.0 / 255.0)                 # what XLA and keras.layers.Rescaling(1/255) compute
    xla = np.asarray(jax.jit(lambda x: x / 255.0)(v))  # jnp x / 255 under jit
    ulps = mul.view(np.int32).astype(np.int64) - div.view(np.int32).astype(np.int64)
    differ = np.flatnonzero(ulps)
    preprocess_is_div = bool(np.array_equal(preprocess(np.arange(256, dtype=np.uint8)[None])[0, :, 0], div))
    counts = np.bincount(raw_train_images().ravel(), minlength=256)
    share = float(counts[differ].sum() / counts.sum())
    result = {"values_differ": int(len(differ)), "max_ulps": int(np.abs(ulps).max()),
              "max_abs_difference": float(np.abs(mul - div).max()),
              "xla_jit_equals_multiply": bool(np.array_equal(xla, mul)),
              "xla_jit_differs_from_numpy": int((xla != div).sum()),
              "preprocess_is_ieee_division": preprocess_is_div, "share_of_training_pixels": share,
              "first_values": differ[:8].tolist()}

    say(f"Of the 256 pixel values, x/255 and x*(1/255) differ in float32 for {result['values_differ']} "
        f"(the first: {result['first_values']}), each by at most {result['max_ulps']} ulp "
        f"({fmt(result['max_abs_difference'])} absolute).")
    say(f"jax.jit(lambda x: x / 255.) gives x*(1/255) exactly: {result['xla_jit_equals_multiply']} "
        f"({result['xla_jit_differs_from_numpy']} values off NumPy's division; XLA rewrites division by a "
        "constant, a compiler choice: machine- and version-dependent).")
    say(f"{100 * share:.1f}% of the training set's pixels have an affected value (0 and 255 are exact).")
    say(f"fmnist.data.preprocess is NumPy's IEEE x / 255: {preprocess_is_div}. The project scales ONCE, in "
        "NumPy, and feeds the same float32 arrays to every implementation: a 1-ulp input difference moved "
        "the CNN's parameters by 1.8e-2 after one epoch (docs/parity-semantics.md section 5; the mechanism: "
        "`fmnist explain chaos`).")

    fig, (ax_u, ax_h) = figure(2)
    ax_u.vlines(v, 0, ulps, color="tab:blue", linewidth=1)
    ax_u.plot(v[differ], ulps[differ], "o", markersize=2.5, color="tab:blue")
    ax_u.set(xlabel="pixel value x", ylabel="ulps", ylim=(-0.5, 1.5),
             title=f"x*(1/255) - x/255: {len(differ)} of 256 values differ")
    ok = np.ones(256, bool)
    ok[differ] = False
    ax_h.bar(v[ok], counts[ok], width=1.0, color="tab:gray", label="exact either way")
    ax_h.bar(v[~ok], counts[~ok], width=1.0, color="tab:red", label="rounds differently")
    ax_h.set_yscale("log")
    ax_h.set(xlabel="pixel value", ylabel="pixels in the training set",
             title=f"{100 * share:.1f}% of training pixels affected")
    ax_h.legend(fontsize=8)
    result["picture"] = save(fig, out, "pixel-scaling", "dividing by 255 vs multiplying by 1/255 in float32")
    return result
