"""What the hardware allows: the lower bounds `fmnist bench` measures each implementation against.

* `flops_per_image(model)`: the multiply-adds of one training step per image, counted from the
  layer shapes (`fmnist.weights.KERNEL_SHAPES`), times 2 for FLOPs. Forward: a dense layer has
  fan_in * fan_out multiply-adds, a SAME stride-1 convolution H * W * kh * kw * C_in * C_out. The
  backward has the kernel gradient of every layer (as many multiply-adds as its forward) and the
  input gradient of every layer but the first (likewise; nobody needs the images' gradient).
* `peak_timer()`: the rate this machine reaches on a large float32 matrix product (2048 x 2048,
  2 n^3 FLOPs), measured in the same run as the implementations.
* The FLOP bound of an epoch is its FLOPs at that rate: what an epoch would take if every
  multiply-add ran at the matrix product's speed and everything else (ReLU, pooling, the loss,
  Adam, moving data) were free. No implementation can reach it; how close it gets is the figure.
* `mlp_gemm_timer`: for the MLP also the measured time of its epoch's matrix products and Adam
  update alone, compiled as one scan (the MLP's layers are nothing but matrix products).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from fmnist.config import TrainConfig
from fmnist.data import Splits
from fmnist.fastpath.xla import COMPILER_OPTIONS, SCAN_UNROLL
from fmnist.loop import train_loader
from fmnist.weights import KERNEL_SHAPES, init_weights

IMAGE_HW = {"conv_0": (28, 28), "conv_1": (14, 14)}  # spatial size each conv runs at (SAME, stride 1)
PEAK_N = 2048


def forward_macs(model: str) -> dict[str, int]:
    """Multiply-adds of each parametrised layer's forward pass, per image."""
    macs = {}
    for layer, shape in KERNEL_SHAPES[model].items():
        if layer.startswith("conv"):
            h, w = IMAGE_HW[layer]
            kh, kw, cin, cout = shape
            macs[layer] = h * w * kh * kw * cin * cout
        else:
            fan_in, fan_out = shape
            macs[layer] = fan_in * fan_out
    return macs


def flops_per_image(model: str) -> int:
    """FLOPs (2 per multiply-add) of one training step per image: forward, kernel gradients, and
    input gradients of every layer after the first."""
    macs = forward_macs(model)
    first = next(iter(macs))
    return 2 * (3 * sum(macs.values()) - macs[first])


def peak_timer(n: int = PEAK_N) -> Callable[[], float]:
    """A function returning this machine's float32 matrix-product rate now, in FLOP/s (median of 3)."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.standard_normal((n, n)), jnp.float32) for _ in range(2))
    matmul = jax.jit(jnp.dot, compiler_options=COMPILER_OPTIONS)
    jax.block_until_ready(matmul(a, b))

    def rate() -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            jax.block_until_ready(matmul(a, b))
            times.append(time.perf_counter() - start)
        return 2 * n ** 3 / sorted(times)[1]
    return rate


def mlp_gemm_timer(config: TrainConfig, splits: Splits, steps: int) -> Callable[[], float]:
    """The MLP's matrix products and Adam update alone, `steps` times, as one compiled scan.

    Per step: h = x W1 (B,784)x(784,128); z = h W2 (B,128)x(128,10); backward dW2 = h^T dz,
    dh = dz W2^T, dW1 = x^T dh; then Adam on the four parameters. No bias, relu, softmax or
    loss: what is left when everything but the arithmetic-heavy work is free.
    """
    import jax
    import jax.numpy as jnp

    b = config.batch_size
    w = init_weights("mlp", config.init, config.seed)
    params = {k: jnp.asarray(w[l][p]) for l in w for p in ("kernel", "bias")
              for k in [f"{l}/{p}"]}
    x_all = jnp.asarray(splits.x_train.reshape(len(splits.x_train), -1))
    batches = jnp.asarray(np.stack([bi for bi in train_loader(config, splits).batch_indices(0)
                                    if len(bi) == b][:steps]))

    def step(carry, idx):
        p, m, v = carry
        x = x_all[idx]
        h = x @ p["dense_0/kernel"]
        z = h @ p["dense_1/kernel"]
        dz = z * 1e-2  # stands in for the loss gradient, so the backward products depend on z
        g = {"dense_1/kernel": h.T @ dz, "dense_0/kernel": x.T @ (dz @ p["dense_1/kernel"].T),
             "dense_0/bias": p["dense_0/bias"] * 0, "dense_1/bias": p["dense_1/bias"] * 0}
        m = jax.tree.map(lambda m, g: m + (g - m) * 0.1, m, g)
        v = jax.tree.map(lambda v, g: v + (g * g - v) * 0.001, v, g)
        p = jax.tree.map(lambda p, m, v: p - 1e-3 * m / (jnp.sqrt(v) + 1e-7), p, m, v)
        return (p, m, v), z[0, 0]

    zeros = jax.tree.map(jnp.zeros_like, params)
    # The same loop structure and compiler options as the implementations' scans, so the bound
    # gets every advantage they get.
    run = jax.jit(lambda carry, batches: jax.lax.scan(step, carry, batches, unroll=SCAN_UNROLL),
                  compiler_options=COMPILER_OPTIONS)
    carry = [(params, zeros, zeros)]

    def timed() -> float:
        start = time.perf_counter()
        carry[0], out = run(carry[0], batches)
        jax.block_until_ready(out)
        return time.perf_counter() - start

    timed()
    return timed
