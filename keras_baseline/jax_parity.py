"""The parity worker of `--impl keras-jax`: Keras-on-JAX numbers for parity_tests/test_keras_jax.py.

`run_parity(items, arrays, weights)` computes, in ONE child process on Keras's JAX backend
(`python -m keras_baseline.jax_parity DIR`, started by `keras_baseline.child_launcher`),
what the parity suite compares: logits, loss and gradients, training steps, single layers and Adam
updates; `fmnist evaluate --impl keras-jax` uses its "logits" item. Inputs and results travel as
.npy/.npz files in a temporary directory.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from fmnist.config import TrainConfig
from fmnist.weights import Weights, load_weights, save_weights
from keras_baseline.child_launcher import child_command, run_child
from keras_baseline.child_runtime import import_keras_on_jax, run_as_child


# --------------------------------------------------------------------------- parent

def run_parity(items: list[dict], arrays: dict[str, np.ndarray], weights: dict[str, Weights],
               jax_config: dict | None = None, timeout: float = 900) -> dict[str, dict]:
    """Compute every item on the JAX backend in ONE child process; return {item name: results}.

    Items name their inputs: arrays by key in `arrays`, weights by key in `weights`. Kinds:
      logits          model, weights, x                    -> {"logits"}   (`train.logits`, eager)
      loss_and_grads  model, weights, x, y                 -> {"loss", "grads"}  (`train.loss_and_grads`)
      train_steps     config, weights, x, y, batches, batch_sizes, snapshots
                      -> {"losses", "after": {step: weights}}  (`compiled_model` + `train_on_batch`;
                      batches: one flat index array, cut into `batch_sizes`)
      dense           x, kernel, bias                      -> {"y"}  (a `Dense` layer, called eagerly)
      conv            x, kernel, bias, r, strides, padding -> {"y", "dx", "dkernel", "dbias"} (a `Conv2D`,
                      jitted, gradients of sum(r * y) by `jax.grad` of its `stateless_call`)
      adam            config, params (names), grads (names of (T, ...) arrays), snapshots
                      -> {"jit": {t: params}, "eager": {t: params}}  (jitted `stateless_apply`, as
                      the trainer steps; and `apply_gradients` op by op)
    `jax_config` is applied with `jax.config.update` first (e.g. the parity suite's matmul precision).
    """
    with tempfile.TemporaryDirectory(prefix="fmnist-keras-jax-parity-") as tmp:
        directory = Path(tmp)
        (directory / "arrays").mkdir()
        (directory / "weights").mkdir()
        for key, array in arrays.items():
            np.save(directory / "arrays" / f"{key}.npy", np.asarray(array), allow_pickle=False)
        for key, w in weights.items():
            save_weights(directory / "weights" / f"{key}.npz", w)
        (directory / "request.json").write_text(json.dumps({"items": items, "jax_config": jax_config or {}}))
        run_child([str(directory)], command=child_command([str(directory)], "keras_baseline.jax_parity"),
                  timeout=timeout)
        return {item["name"]: _unflatten(np.load(directory / "results" / f"{i}.npz"))
                for i, item in enumerate(items)}


def pack_batches(batches) -> tuple[np.ndarray, np.ndarray]:
    """A list of index arrays (sizes may differ) as (flat int32 indices, int32 sizes), for `train_steps`."""
    batches = [np.asarray(b, np.int32) for b in batches]
    return np.concatenate(batches), np.array([len(b) for b in batches], np.int32)


def _flatten(tree, prefix="") -> dict[str, np.ndarray]:
    if isinstance(tree, dict):
        flat = {}
        for k, v in tree.items():
            flat.update(_flatten(v, f"{prefix}{k}/"))
        return flat
    return {prefix[:-1]: np.asarray(tree)}


def _unflatten(npz) -> dict:
    out: dict = {}
    with npz:
        for key in npz.files:
            *path, last = [int(p) if p.isdigit() else p for p in key.split("/")]
            node = out
            for p in path:
                node = node.setdefault(p, {})
            value = npz[key]
            node[last] = value.item() if value.ndim == 0 else value
    return out


# --------------------------------------------------------------------------- child

def _child_parity(directory: Path) -> None:
    """Compute every item of DIR/request.json and save each result as DIR/results/{i}.npz."""
    request = json.loads((directory / "request.json").read_text())
    models, train = import_keras_on_jax()
    import jax

    for key, value in request["jax_config"].items():
        jax.config.update(key, value)
    arrays = {p.stem: np.load(p) for p in (directory / "arrays").glob("*.npy")}
    weights = {p.stem: load_weights(p) for p in (directory / "weights").glob("*.npz")}
    (directory / "results").mkdir()
    for i, item in enumerate(request["items"]):
        result = _PARITY_KINDS[item["kind"]](item, arrays, weights, models, train)
        np.savez(directory / "results" / f"{i}.npz", **_flatten(result))


def _parity_logits(item, arrays, weights, models, train):
    model = models.from_weights(item["model"], weights[item["weights"]])
    return {"logits": train.logits(model, arrays[item["x"]])}


def _parity_loss_and_grads(item, arrays, weights, models, train):
    model = models.from_weights(item["model"], weights[item["weights"]])
    loss, grads = train.loss_and_grads(model, arrays[item["x"]], arrays[item["y"]])
    return {"loss": np.float64(loss), "grads": grads}


def _parity_train_steps(item, arrays, weights, models, train):
    config = TrainConfig(**item["config"])
    model = train.compiled_model(config, weights[item["weights"]])
    x, y = arrays[item["x"]], arrays[item["y"]]
    batches = np.split(arrays[item["batches"]], np.cumsum(arrays[item["batch_sizes"]])[:-1])
    losses, after, done = [], {}, 0
    for stop in sorted(item["snapshots"]):
        losses.append(train.train_steps(model, [(x[idx], y[idx]) for idx in batches[done:stop]]))
        after[stop], done = models.to_weights(model), stop
    return {"losses": np.concatenate(losses), "after": after}


def _parity_dense(item, arrays, weights, models, train):
    kernel, bias = arrays[item["kernel"]], arrays[item["bias"]]
    layer = train.keras.layers.Dense(kernel.shape[1])
    layer.build((None, kernel.shape[0]))
    layer.set_weights([kernel, bias])
    return {"y": np.asarray(layer(arrays[item["x"]]))}


def _parity_conv(item, arrays, weights, models, train):
    import jax
    import jax.numpy as jnp

    x, kernel, bias, r = (arrays[item[k]] for k in ("x", "kernel", "bias", "r"))
    layer = train.keras.layers.Conv2D(kernel.shape[-1], kernel.shape[:2], strides=item["strides"],
                                      padding=item["padding"].lower())
    layer.build((None, *x.shape[1:]))
    layer.set_weights([kernel, bias])

    def forward(x, kernel, bias):  # trainable_variables of Conv2D: [kernel, bias]
        return layer.stateless_call([kernel, bias], [], x)[0]

    y = jax.jit(forward)(x, kernel, bias)
    dx, dk, db = jax.jit(jax.grad(lambda x, k, b: jnp.sum(forward(x, k, b) * r), argnums=(0, 1, 2)))(x, kernel, bias)
    return {"y": np.asarray(y), "dx": np.asarray(dx), "dkernel": np.asarray(dk), "dbias": np.asarray(db)}


def _parity_adam(item, arrays, weights, models, train):
    import jax

    keras = train.keras
    config = TrainConfig(**item["config"])
    names = list(item["params"])
    params = [arrays[item["params"][n]] for n in names]
    grads = [arrays[item["grads"][n]] for n in names]
    snapshots, steps = set(item["snapshots"]), len(grads[0])
    out = {"jit": {}, "eager": {}}

    variables = [keras.Variable(p, name=n) for n, p in zip(names, params)]
    opt = train.make_optimizer(config)
    opt.build(variables)
    step = jax.jit(opt.stateless_apply)  # (optimizer vars, grads, trainable vars) -> (trainable, optimizer)
    values, opt_values = [v.value for v in variables], [v.value for v in opt.variables]
    for t in range(steps):
        values, opt_values = step(opt_values, [g[t] for g in grads], values)
        if t + 1 in snapshots:
            out["jit"][t + 1] = {n: np.asarray(v) for n, v in zip(names, values)}

    variables = [keras.Variable(p, name=n) for n, p in zip(names, params)]
    opt = train.make_optimizer(config)
    for t in range(steps):
        opt.apply_gradients([(keras.ops.convert_to_tensor(g[t]), v) for g, v in zip(grads, variables)])
        if t + 1 in snapshots:
            out["eager"][t + 1] = {n: np.array(v.numpy()) for n, v in zip(names, variables)}
    return out


_PARITY_KINDS = {"logits": _parity_logits, "loss_and_grads": _parity_loss_and_grads,
                 "train_steps": _parity_train_steps, "dense": _parity_dense, "conv": _parity_conv,
                 "adam": _parity_adam}


def main(argv=None) -> int:
    """The child's entry point: `python -m keras_baseline.jax_parity DIR`."""
    directory = Path((argv if argv is not None else sys.argv[1:])[0])
    return run_as_child(lambda replies: _child_parity(directory), directory)


if __name__ == "__main__":
    sys.exit(main())
