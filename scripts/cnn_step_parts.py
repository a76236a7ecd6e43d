"""Where a CNN training step's time goes, piece by piece, beside the FLOP bound of each piece.

    python scripts/cnn_step_parts.py [--batch 128] [--rounds 9]

Times, with the fast path's compiler options and at the shapes training uses (the batch in
`GRAD_PARTS_BY_MODEL["cnn"]` slices, every piece computed once per slice in one compiled function,
so the slices run side by side as in the step):

  conv_1 forward / input gradient / kernel gradient   lax convolution 14x14x32 -> 64 (85% of the FLOPs)
  conv_0 chain forward                                 shift conv + bias + relu + first-max pool
  conv_0 kernel gradient                               the shift conv's patches^T dy product
  dense_0 forward + gradients                          (B, 3136) x (3136, 128) and its two products
  GEMM ...                                             conv_1's three products as plain matrix products
                                                       of its im2col shapes (the patches given)
  whole step                                           the hand-rolled fast-path step (Adam included)

interleaved A B C ... for `--rounds` rounds (a slow minute hits every piece), medians in ms, and
each piece's FLOPs at the 2048^2 matmul rate measured in the same rounds. The pieces overlap
inside the real step (XLA runs independent operations side by side), so their sum need not equal
the step. docs/performance.md section 2.9 has the figures and what they mean.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fmnist.app.bench import _jax_timer
from fmnist.app.bounds import flops_per_image, peak_timer
from fmnist.config import TrainConfig
from fmnist.data import load_splits
from fmnist.fastpath.layers import max_pool_2x2, shift_conv_3x3
from fmnist.fastpath.xla import COMPILER_OPTIONS, GRAD_PARTS_BY_MODEL


def conv(x, kernel):
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def pieces(slice_size: int, rng) -> dict:
    """name -> (function of one slice's arrays, those arrays, FLOPs per slice)."""
    def normal(*shape, scale=1.0):
        return jnp.asarray(rng.standard_normal(shape) * scale, jnp.float32)
    n = slice_size
    x1, k1, dy1 = normal(n, 14, 14, 32), normal(3, 3, 32, 64, scale=0.1), normal(n, 14, 14, 64)
    x0, k0, b0, dy0 = normal(n, 28, 28, 1), normal(3, 3, 1, 32, scale=0.3), normal(32), normal(n, 28, 28, 32)
    h, w, dz = normal(n, 3136), normal(3136, 128, scale=0.02), normal(n, 128)
    conv_1 = 2 * n * 14 * 14 * 9 * 32 * 64
    return {
        "conv_1 forward": (conv, (x1, k1), conv_1),
        "conv_1 input gradient": (lambda k, dy: jax.vjp(lambda x: conv(x, k), x1)[1](dy)[0], (k1, dy1), conv_1),
        "conv_1 kernel gradient": (lambda x, dy: jax.vjp(lambda k: conv(x, k), k1)[1](dy)[0], (x1, dy1), conv_1),
        "conv_0 chain forward": (lambda x, k, b: max_pool_2x2(jax.nn.relu(shift_conv_3x3(x, k) + b)), (x0, k0, b0),
                                 2 * n * 28 * 28 * 9 * 32),
        "conv_0 kernel gradient": (lambda x, dy: jax.vjp(lambda k: shift_conv_3x3(x, k), k0)[1](dy)[0], (x0, dy0),
                                   2 * n * 28 * 28 * 9 * 32),
        "dense_0 forward + gradients": (lambda h, w, dz: (h @ w, h.T @ dz, dz @ w.T), (h, w, dz), 3 * 2 * n * 3136 * 128),
        # conv_1's three products as plain matrix products of its im2col shapes (patches given, not built):
        # what a GEMM of these shapes reaches here, the best an im2col convolution could do.
        "GEMM (B*196, 288) x (288, 64)": (jnp.dot, (normal(n * 196, 288), normal(288, 64)), conv_1),
        "GEMM (B*196, 64) x (64, 288)": (jnp.dot, (normal(n * 196, 64), normal(64, 288)), conv_1),
        "GEMM (288, B*196) x (B*196, 64)": (jnp.dot, (normal(288, n * 196), normal(n * 196, 64)), conv_1),
    }


def both_slices(fn, parts: int):
    """One compiled function computing `fn` on `parts` independent slices, as the step does."""
    return jax.jit(lambda *args: [fn(*a) for a in args], compiler_options=COMPILER_OPTIONS)


def step_timer(batch: int, steps: int = 20):
    """Seconds per hand-rolled fast-path CNN step, timed as `fmnist bench` times it."""
    config = TrainConfig(model="cnn", batch_size=batch)
    splits = load_splits(config.val_size, config.split_seed, max(8192, batch * steps))
    timed = _jax_timer("handrolled", config, splits, steps)
    return lambda: timed() / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    parts = GRAD_PARTS_BY_MODEL["cnn"]
    if args.batch % parts:
        parser.error(f"--batch must be a multiple of {parts} (the step's gradient slices)")
    rng = np.random.default_rng(0)
    timers, flops = {}, {}
    slices = [pieces(args.batch // parts, rng) for _ in range(parts)]  # other numbers per slice: no CSE
    for name, (fn, _, slice_flops) in slices[0].items():
        compiled, inputs = both_slices(fn, parts), [s[name][1] for s in slices]
        jax.block_until_ready(compiled(*inputs))
        timers[name] = lambda compiled=compiled, inputs=inputs: _seconds(compiled, inputs)
        flops[name] = slice_flops * parts
    timers["whole step"] = step_timer(args.batch)
    flops["whole step"] = flops_per_image("cnn") * args.batch
    peak = peak_timer()
    samples = {name: [] for name in [*timers, "matmul"]}
    for _ in range(args.rounds):
        for name, timed in timers.items():
            samples[name].append(timed())
        samples["matmul"].append(peak())
    rate = statistics.median(samples.pop("matmul"))
    print(f"CNN step at batch {args.batch} in {parts} slices; matmul rate {rate / 1e9:.0f} GFLOP/s; "
          f"medians of {args.rounds} interleaved rounds")
    print(f"| piece | ms | GFLOP/s | FLOP bound ms | ms / bound |\n|---|---|---|---|---|")
    for name, times in samples.items():
        t, bound = statistics.median(times), flops[name] / rate
        print(f"| {name} | {t * 1e3:.2f} | {flops[name] / t / 1e9:.0f} | {bound * 1e3:.2f} | {t / bound:.2f}x |")


def _seconds(compiled, inputs) -> float:
    start = time.perf_counter()
    jax.block_until_ready(compiled(*inputs))
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
