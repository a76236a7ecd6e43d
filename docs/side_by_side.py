"""Writes docs/side-by-side/*.md: one page per concept, the hand-rolled, Flax and Keras code of it
next to each other, taken from the real modules, with the parity measurement for that concept.

    python docs/side_by_side.py          # rewrite the pages
    python docs/side_by_side.py --check  # exit 1 if a page would change (what tests/test_side_by_side.py asserts)

The code is `inspect.getsource` of the named objects, so a page cannot go stale without the test
noticing; the measurements are the rows of parity_tests/README.md's table whose first cell starts
with the given text.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "side-by-side"

# concept -> (title, intro, [(column, [dotted objects], note)], [parity README row prefixes])
PAGES = {
    "dense-layer": (
        "Dense layer", "y = x W + b, with W of shape (inputs, outputs) in every implementation, so the "
        "canonical weights copy across without a transpose.",
        [("Hand-rolled", ["handrolled.layers.Linear.__call__", "handrolled.layers.Linear.from_params"], ""),
         ("Flax linen", ["flax_impl.models.MLP"], "`nn.Dense` creates its kernel and bias at `init`; the "
          "project loads them with `from_weights` instead."),
         ("Flax NNX", ["nnx_impl.models.MLP"], "`nnx.Linear` is told its input size: the parameters exist "
          "before any input is seen."),
         ("Keras", ["keras_baseline.models.build_model"], "")],
        ["Dense 784->128", "whole-model logits"]),
    "convolution": (
        "Convolution", "y[n, p, q, o] = b[o] + sum_{i, j, c} xpad[n, p + i, q + j, c] w[i, j, c, o]: NHWC "
        "images, HWIO kernels, SAME padding with the odd row at the bottom/right.",
        [("Hand-rolled", ["handrolled.conv.conv2d_lax", "handrolled.conv.same_padding"], ""),
         ("Flax linen", ["flax_impl.models.CNN"], "`nn.Conv(features, (3, 3))`: the kernel size must be a "
          "pair (`nn.Conv(32, 3)` is a 1-D convolution)."),
         ("Keras", ["keras_baseline.models.build_model"], "Keras pads 'valid' unless told 'same'."),
         ("The fast path", ["fmnist.fastpath.layers._shift_conv_3x3"], "The CNN's first convolution on the "
          "fast path: the same sum as shifted slices (docs/performance.md).")],
        ["Conv2D forward", "Conv2D gradients"]),
    "pooling": (
        "Max pooling", "y[n, i, j, c] = max over a, b in {0, 1} of x[n, 2i + a, 2j + b, c] (2x2 windows, "
        "stride 2, VALID).",
        [("Hand-rolled", ["handrolled.conv.max_pool2d_reshape"], "`jnp.max`'s gradient splits ties evenly."),
         ("Flax linen", ["flax_impl.models.max_pool"], "`nn.max_pool` defaults to stride 1."),
         ("Keras", ["keras_baseline.models.build_model"], "`MaxPooling2D(2)`: the stride defaults to the "
          "pool size."),
         ("The fast path", ["fmnist.fastpath.layers._max_pool_fwd", "fmnist.fastpath.layers._max_pool_bwd"],
          "The first-max pool: the gradient goes to each window's first maximum, as TF and "
          "`nn.max_pool` send it.")],
        ["MaxPool 2/2", "`max_pool_2x2`"]),
    "softmax-and-cross-entropy": (
        "Softmax and cross-entropy", "l_i = logsumexp(z_i) - z_i[y_i], from logits, averaged over the "
        "batch.",
        [("Hand-rolled", ["handrolled.functional.log_softmax", "handrolled.losses.sparse_cross_entropy_with_logits"],
          ""),
         ("Flax linen", ["flax_impl.train.loss_and_correct"], "Optax's integer-label cross-entropy."),
         ("Keras", ["keras_baseline.train.make_loss"], "From logits, so no probability clipping.")],
        ["softmax,", "log-softmax", "cross-entropy from logits", "batch-mean loss"]),
    "adam-step": (
        "Adam step", "Keras's epsilon-hat form: alpha = lr sqrt(1 - b2^t) / (1 - b1^t); "
        "theta -= alpha m / (sqrt(v) + eps_hat). The paper's form puts eps on sqrt(v_hat).",
        [("Hand-rolled", ["handrolled.optimizers.Adam.update"], ""),
         ("Flax linen and NNX (Optax)", ["flax_impl.optimizers.keras_adam", "flax_impl.optimizers.make_optimizer"],
          "`optax.adam` is the paper's form; `keras_adam` reproduces Keras op for op."),
         ("Keras", ["keras_baseline.train.make_optimizer"], "")],
        ["Adam, Keras convention", "Adam, paper convention", "`optax.adam(eps=1e-7)`"]),
    "training-step": (
        "Training step", "Loss and gradient at the current weights, then the optimizer's update; the "
        "reported loss is the batch's before the update.",
        [("Hand-rolled", ["handrolled.train.loss_and_grads", "handrolled.train.train_step"], ""),
         ("Flax linen", ["flax_impl.train.loss_and_grads", "flax_impl.train.train_step"], ""),
         ("Flax NNX", ["nnx_impl.train.loss_and_grads", "nnx_impl.train.train_step"],
          "The model and optimizer are updated in place."),
         ("Keras", ["keras_baseline.train.compiled_model"], "The step is `Model.train_step`, run inside `fit`.")],
        ["training, pre-update batch losses", "hand-rolled vs Flax vs NNX"]),
    "evaluation": (
        "Evaluation", "Mean loss and accuracy over every example, in batches of one compiled shape: the "
        "last batch padded and masked.",
        [("The shared loop", ["fmnist.loop.evaluate_in_padded_batches"], ""),
         ("Hand-rolled", ["handrolled.train.evaluate"], ""),
         ("Flax linen", ["flax_impl.train.evaluate"], ""),
         ("Keras", ["keras_baseline.train.evaluate"], "")],
        ["one 125-step epoch, \"together\""]),
}


def source_of(dotted: str) -> str:
    """`inspect.getsource` of module.attr[.attr], dedented."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return inspect.cleandoc("\n" + inspect.getsource(getattr(obj, "__wrapped__", obj)))
    raise ImportError(dotted)


def parity_rows(prefixes) -> list[str]:
    rows = [line for line in (ROOT / "parity_tests" / "README.md").read_text().splitlines() if line.startswith("| ")]
    picked = [row for p in prefixes for row in rows if row[2:].startswith(p)]
    missing = [p for p in prefixes if not any(row[2:].startswith(p) for row in rows)]
    if missing:
        raise ValueError(f"no row of parity_tests/README.md starts with {missing}")
    return ["| check (file) | measured | asserted | why |", "|---|---|---|---|", *picked]


def render(name: str) -> str:
    title, intro, columns, prefixes = PAGES[name]
    lines = [f"# {title}: side by side", "",
             "<!-- Generated by docs/side_by_side.py from the real modules; do not edit by hand. -->", "",
             intro, ""]
    for column, objects, note in columns:
        lines += [f"## {column}", ""]
        if note:
            lines += [note, ""]
        for dotted in objects:
            module_path = dotted.split(".")[0]
            lines += [f"`{dotted}` ({module_path}/):", "", "```python", source_of(dotted), "```", ""]
    lines += ["## How closely they agree", "", "Measured by the parity suite ([parity_tests/README.md]"
              "(../../parity_tests/README.md)):", "", *parity_rows(prefixes), ""]
    return "\n".join(lines)


def index() -> str:
    lines = ["# Side by side", "", "One idea per page, the hand-rolled, Flax and Keras code of it from the real "
             "modules, and how closely the parity suite measured them to agree.", ""]
    lines += [f"* [{PAGES[name][0]}]({name}.md)" for name in PAGES]
    return "\n".join(lines) + "\n"


def pages() -> dict[Path, str]:
    out = {OUT / f"{name}.md": render(name) for name in PAGES}
    out[OUT / "README.md"] = index()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a page would change")
    args = parser.parse_args(argv)
    stale = []
    for path, text in pages().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'}: {path.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
