"""XLA settings shared by the two JAX implementations and the benchmark's bound (plain data and one
small function: this module imports nothing, so `fmnist` stays framework-free).

COMPILER_OPTIONS is passed to every `jax.jit` of a training or evaluation step (local to those
functions, not a process-wide flag): XLA:CPU may then generate 512-bit vector code (these CPUs have
AVX-512; XLA's default prefers 256-bit). Measured in one process, A B A B, 9 rounds: MLP epoch
0.286 -> 0.251 s (-12%), CNN batch 128 step 44.9 -> 41.3 ms (-8%), gradients bit-identical on a real
batch (same operations, wider registers). Other backends ignore xla_cpu_* options.

XLA_KERNELS switches the kernels for matrix products and convolutions. By default XLA:CPU (jax
0.10) hands them to YNNPACK fusions (`ynn_fusion` in the compiled HLO), each of which runs on one
core; with the YNN fusion list set to empty, XLA calls its own convolution and dot kernels (Eigen),
which split one large operation across the cores. Which wins depends on the size of the work, so
`train_compiler_options` picks per model and batch size, from these measurements (2-core box, jitted
training step with Keras-convention Adam and the gradient in 2 slices as trained, ms per step,
hand-rolled and Flax, medians of 27 interleaved steps, ranges over both implementations and 3
processes on a shared machine; batch 256: one process):

                     YNNPACK (default)   XLA kernels
    CNN batch  32        4.2-5.0          6.4-8.0      many small operations: one core each wins
    CNN batch  64        7.5-9.6         11.8-14.4
    CNN batch 128       17.9-23.2        14.9-19.6     the backward convolutions use both cores
    CNN batch 256       45.8-46.5        44.7-44.9
    MLP batch  32      0.097-0.131      0.082-0.127    (hand-rolled, 100-step scan, 2 processes:
                                                        within the noise, so the MLP keeps the default)

At batch 128 the whole-batch CNN gradient alone takes 23.4 ms with YNNPACK and 14.9 ms with XLA's
kernels (same process). Evaluation (forward only, batch 1000) gains nothing (72 vs 77 ms) and keeps
the default. The two kernel sets round differently: gradients agree to 7e-7 of their largest entry.

SCAN_UNROLL is the number of training steps per iteration of a `lax.scan` loop: unrolling by 2
halves the loop's per-iteration overhead. Measured on the 2-core box, MLP batch 32, 600 steps, one
process, A B A B: 0.309/0.315 s/epoch (unroll 1) vs 0.289/0.284 (unroll 2); 4 and 8 were no better
than 1 (0.30, 0.31). The steps and their order are unchanged, so the numbers are too (tested
against the Python loop of single steps).
"""

COMPILER_OPTIONS = {"xla_cpu_prefer_vector_width": 512}
XLA_KERNELS = {"xla_cpu_experimental_ynn_fusion_type": ""}  # no YNNPACK fusions: XLA's own kernels
CNN_XLA_KERNELS_MIN_BATCH = 128
SCAN_UNROLL = 2


def train_compiler_options(model: str, batch_size: int) -> dict:
    """Compiler options for the training steps of `model` at `batch_size`: COMPILER_OPTIONS, plus
    XLA_KERNELS for the CNN at batch sizes >= CNN_XLA_KERNELS_MIN_BATCH (see the table above)."""
    if model == "cnn" and batch_size >= CNN_XLA_KERNELS_MIN_BATCH:
        return {**COMPILER_OPTIONS, **XLA_KERNELS}
    return dict(COMPILER_OPTIONS)
