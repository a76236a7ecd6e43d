"""Time the Conv2D and MaxPool2D implementations: `python -m handrolled.benchmark [--batch 128]`.

For each combination of conv impl ("lax", "im2col") and pool impl ("reduce_window", "reshape"),
it times `jax.jit(jax.grad(loss))(model, x, y)` of the CNN (the cost of one training step
without the optimizer), and the forward pass alone, and prints the median over `--repeats`
calls after one warm-up (compile) call. It also checks that every variant computes the same
logits as lax + reduce_window to float32 rounding, so a fast but wrong variant is caught.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from handrolled.losses import sparse_cross_entropy_with_logits
from handrolled.models import cnn

CONV_IMPLS = ("lax", "im2col")
POOL_IMPLS = ("reduce_window", "reshape")


def _median_ms(calls: dict, repeats: int) -> dict:
    """Median wall time in ms of each zero-argument callable in `calls`, interleaved.

    Calls are timed round-robin (one of each per round) so that load from other processes
    affects every variant alike; each is called once first to compile.
    """
    for fn in calls.values():
        jax.block_until_ready(fn())
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def run(batch: int = 128, repeats: int = 20, seed: int = 0) -> list[dict]:
    """One row per (conv, pool) impl: median ms of the jitted grad and forward, and max |logit diff|."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.random((batch, 28, 28, 1), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, batch))

    def loss(model, x, y):
        return sparse_cross_entropy_with_logits(y, model(x))

    grad_fn = jax.jit(jax.grad(loss))
    forward = jax.jit(lambda model, x: model(x))
    reference = forward(cnn(seed=seed, conv_impl="lax", pool_impl="reduce_window"), x)
    models = {(c, p): cnn(seed=seed, conv_impl=c, pool_impl=p) for c in CONV_IMPLS for p in POOL_IMPLS}
    grad_ms = _median_ms({k: (lambda m=m: grad_fn(m, x, y)) for k, m in models.items()}, repeats)
    forward_ms = _median_ms({k: (lambda m=m: forward(m, x)) for k, m in models.items()}, repeats)
    return [{"conv": c, "pool": p, "grad_ms": grad_ms[c, p], "forward_ms": forward_ms[c, p],
             "max_logit_diff": float(jnp.max(jnp.abs(forward(m, x) - reference)))}
            for (c, p), m in models.items()]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, batch {args.batch}, "
          f"median of {args.repeats}")
    print(f"{'conv':>7s} {'pool':>14s} {'grad ms':>9s} {'fwd ms':>8s} {'max|dlogit|':>12s}")
    for r in run(args.batch, args.repeats):
        print(f"{r['conv']:>7s} {r['pool']:>14s} {r['grad_ms']:9.1f} {r['forward_ms']:8.1f} "
              f"{r['max_logit_diff']:12.2e}")


if __name__ == "__main__":
    main()
