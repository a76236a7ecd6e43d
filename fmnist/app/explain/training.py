"""What whole trainings do: `keras-shuffle` (Keras's epoch order) and `chaos` (float32 trajectories part)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmnist.app.explain.common import FLOOR, MACHINE, canonical_weights, figure, fmt, import_keras, real_batch, save


def _shared_orders(n: int, batch: int, seed: int, epochs: int) -> np.ndarray:
    """The project's batch order (`fmnist.loop.train_loader`) of `n` examples, one row per epoch."""
    from fmnist.config import TrainConfig
    from fmnist.data import Splits
    from fmnist.loop import train_loader

    x, y = np.arange(n, dtype=np.float32)[:, None], np.zeros(n, np.int32)
    loader = train_loader(TrainConfig(batch_size=batch, seed=seed), Splits(x, y, x, y, x, y))
    return np.stack([np.concatenate(loader.batch_indices(e)) for e in range(epochs)])


def _keras_orders(keras, n: int, batch: int, epochs: int, seed: int, eager: bool) -> np.ndarray:
    """The example order of each epoch of a seeded `fit(shuffle=True)`, one row per epoch.

    The model's first layer writes down the batches it sees (the feature of example i is i): as
    plain Python when `eager`, else through `tf.py_function` inside the compiled graph (TF backend)."""
    seen = []

    def write(t):
        seen.append(np.asarray(t)[:, 0].round().astype(int))
        return t

    class Recorder(keras.layers.Layer):
        def call(self, x):
            if isinstance(x, keras.KerasTensor):  # symbolic, while the model is built
                return x
            if eager:
                write(x.numpy() if hasattr(x, "numpy") else x)
                return x
            import tensorflow as tf

            y = tf.py_function(lambda t: write(t.numpy()), [x], x.dtype)
            y.set_shape(x.shape)
            return y

    keras.utils.set_random_seed(seed)
    x, y = np.arange(n, dtype=np.float32)[:, None], np.zeros((n, 1), np.float32)
    model = keras.Sequential([keras.Input((1,)), Recorder(), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", run_eagerly=eager)
    model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=True, verbose=0)
    return np.concatenate(seen).reshape(epochs, n)


def keras_shuffle(out: Path, say, n: int = 24, batch: int = 6, epochs: int = 3, seed: int = 123) -> dict:
    from fmnist.app.explain import TopicUnavailable

    keras = import_keras()
    if keras is None:
        raise TopicUnavailable("this topic runs the real Keras, which is not installed here "
                               "(pip install -e '.[keras]', see docs/install.md)")
    keras_orders = _keras_orders(keras, n, batch, epochs, seed, eager=True)
    graph = None
    if keras.backend.backend() == "tensorflow":
        graph = _keras_orders(keras, n, batch, epochs, seed, eager=False)
    shared = _shared_orders(n, batch, seed, epochs)
    distinct = lambda orders: len({tuple(o) for o in orders})  # noqa: E731
    result = {"keras_orders": keras_orders.tolist(), "shared_orders": shared.tolist(),
              "keras_distinct_epochs": distinct(keras_orders), "shared_distinct_epochs": distinct(shared),
              "keras_is_a_permutation": bool(all(sorted(o) == list(range(n)) for o in keras_orders)),
              "keras_version": keras.__version__, "backend": keras.backend.backend(),
              "graph_distinct_epochs": None if graph is None else distinct(graph),
              "graph_equals_eager": None if graph is None else bool(np.array_equal(graph, keras_orders))}

    say(f"keras {keras.__version__} ({result['backend']} backend), keras.utils.set_random_seed({seed}), "
        f"fit(shuffle=True, batch_size={batch}, epochs={epochs}, run_eagerly=True) on {n} examples whose feature "
        "is their index:")
    for e, order in enumerate(keras_orders):
        say(f"  Keras epoch {e}: {order.tolist()}")
    say(f"  -> {result['keras_distinct_epochs']} distinct order(s) in {epochs} epochs: every epoch replays the "
        "first permutation (cf. tensorflow/tensorflow#26179).")
    if graph is not None:
        say(f"  compiled (graph mode, the default): {result['graph_distinct_epochs']} distinct order(s), the same "
            f"as eager: {result['graph_equals_eager']}")
    say(f"The shared order (fmnist.loop.train_loader, seed {seed}): epoch e is "
        "np.random.default_rng([seed, e]).permutation(n):")
    for e, order in enumerate(shared):
        say(f"  shared epoch {e}: {order.tolist()}")
    say(f"  -> {result['shared_distinct_epochs']} distinct orders. Keras's order cannot be reproduced outside "
        "TensorFlow, so the project feeds Keras the shared order with shuffle=False.")

    fig, axes = figure(2, height=3.6)
    for ax, orders, title in ((axes[0], keras_orders, "Keras fit(shuffle=True), seeded"),
                              (axes[1], shared, "shared order (fmnist.loop.train_loader)")):
        ax.imshow(orders, cmap="viridis", aspect="auto")
        for (e, i), v in np.ndenumerate(orders):
            ax.text(i, e, str(v), ha="center", va="center", fontsize=7, color="white")
        ax.set_yticks(range(epochs), [f"epoch {e}" for e in range(epochs)])
        ax.set(xlabel="position in the epoch (example index shown)", title=title)
    result["picture"] = save(fig, out, "keras-shuffle", f"which example comes when, {epochs} epochs", grid=False)
    return result


def _perturbed(weights, noise: float, seed: int = 1):
    rng = np.random.default_rng(seed)
    return {layer: {k: (v + rng.standard_normal(v.shape) * noise).astype(np.float32) if k == "kernel" else v.copy()
                    for k, v in params.items()} for layer, params in weights.items()}


def _first_step(curve: np.ndarray, level: float):
    above = np.flatnonzero(curve > level)
    return int(above[0]) + 1 if len(above) else None


def chaos(out: Path, say, steps: int = 500, noise: float = 1e-7, n_train: int = 12000, threshold: float = 1e-5) -> dict:
    import jax

    from fmnist.config import TrainConfig
    from fmnist.data import Splits
    from fmnist.loop import train_loader
    from handrolled import train as ht
    from handrolled.models import from_weights

    x_all, y_all = real_batch(n_train + 5000)
    x, y, x_val, y_val = x_all[:n_train], y_all[:n_train], x_all[n_train:], y_all[n_train:]
    config = TrainConfig(model="mlp", batch_size=32, seed=0, steps_per_call=1)
    loader = train_loader(config, Splits(x, y, x_val, y_val, x_val, y_val))
    per_epoch = len(x) // config.batch_size
    batches = np.concatenate([np.stack(loader.batch_indices(e)[:per_epoch]) for e in range(-(-steps // per_epoch))])
    optimizer = ht.make_optimizer(config)                 # Adam, Keras's convention, lr 1e-3
    run_steps = ht.make_run_steps(config, optimizer, x, y)  # the fast path, one compiled step per call
    start = canonical_weights("mlp")
    runs = {"A": start, "A again": start, "B = A + noise": _perturbed(start, noise)}
    states = {}
    for name, w in runs.items():
        model = from_weights("mlp", w, fast=True)
        states[name] = (model, optimizer.init(model))
    leaves = lambda state: [np.array(a) for a in jax.tree.leaves(state[0])]  # noqa: E731  copies: state is donated
    start_gap = max(float(np.abs(a - b).max()) for a, b in zip(leaves(states["A"]), leaves(states["B = A + noise"])))
    param_gap, control_gap, loss_gap = np.zeros(steps), np.zeros(steps), np.zeros(steps)
    for t in range(steps):
        losses = {}
        for name in runs:
            states[name], loss, _ = run_steps(states[name], batches[t:t + 1])
            losses[name] = float(np.asarray(loss)[0])
        a = leaves(states["A"])
        param_gap[t] = max(float(np.abs(p - q).max()) for p, q in zip(a, leaves(states["B = A + noise"])))
        control_gap[t] = max(float(np.abs(p - q).max()) for p, q in zip(a, leaves(states["A again"])))
        loss_gap[t] = abs(losses["A"] - losses["B = A + noise"])
    accuracy = {name: float(ht.evaluate(states[name][0], x_val, y_val)[1]) for name in ("A", "B = A + noise")}
    result = {"steps": steps, "noise": noise, "start_gap": start_gap, "final_param_gap": float(param_gap[-1]),
              "max_param_gap": float(param_gap.max()), "control_max_gap": float(control_gap.max()),
              "params_part_at_step": _first_step(param_gap, threshold),
              "params_1e-3_at_step": _first_step(param_gap, 1e-3),
              "losses_part_at_step": _first_step(loss_gap, threshold), "max_loss_gap": float(loss_gap.max()),
              "val_accuracy": accuracy, "threshold": threshold}

    say(f"Hand-rolled MLP on the fast path, Adam (Keras convention, lr 1e-3), batch 32, {n_train} real "
        f"training images, the same batches for every run. Run B starts from A's weights plus N(0, {noise}) "
        f"noise on the kernels (max |difference| {fmt(start_gap, 3)}).")
    say(f"  control, A run twice: max |parameter difference| over {steps} steps = {fmt(result['control_max_gap'])} "
        "(JAX on one CPU is deterministic)")
    say(f"  A vs B: parameters differ by more than {threshold} from step {fmt(result['params_part_at_step'])}, "
        f"by more than 1e-3 from step {fmt(result['params_1e-3_at_step'])}; the batch losses by more than "
        f"{threshold} from step {fmt(result['losses_part_at_step'])}")
    say(f"  after {steps} steps: parameters {fmt(result['final_param_gap'], 3)} apart "
        f"({fmt(param_gap[-1] / start_gap, 3)}x the start), largest batch-loss gap {fmt(result['max_loss_gap'], 3)}; "
        f"accuracy on 5000 other training images A {accuracy['A']:.4f}, B {accuracy['B = A + noise']:.4f}")
    say(f"Exact step numbers are {MACHINE[1:-1]}. So two float32 implementations are compared tightly only for "
        "<= 100 steps, and over epochs through their losses and accuracies (docs/parity-semantics.md section 5).")

    fig, (ax_p, ax_l) = figure(2)
    t = np.arange(1, steps + 1)
    ax_p.semilogy(t, np.maximum(param_gap, FLOOR), color="tab:red", label="A vs B (start 1e-7 apart)")
    ax_p.semilogy(t, np.maximum(control_gap, FLOOR), color="gray", label="A vs A again (0: identical)")
    ax_p.axhline(threshold, color="black", linestyle=":", linewidth=0.8, label=f"{threshold}")
    ax_p.set(xlabel="training step", ylabel="max |parameter difference|", title="parameters")
    ax_p.legend(fontsize=8)
    ax_l.semilogy(t, np.maximum(loss_gap, FLOOR), color="tab:blue", linewidth=0.8, label="|loss A - loss B|")
    ax_l.axhline(threshold, color="black", linestyle=":", linewidth=0.8)
    ax_l.set(xlabel="training step", ylabel="|batch loss difference|", title="batch losses")
    ax_l.legend(fontsize=8)
    result["picture"] = save(fig, out, "chaos",
                             f"float32 training is chaotic: N(0, {noise}) on the start, {steps} steps")
    return result
