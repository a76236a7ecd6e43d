"""XLA settings shared by the two JAX implementations and the benchmark's bound (plain data: this
module imports nothing, so `fmnist` stays framework-free).

COMPILER_OPTIONS is passed to every `jax.jit` of a training or evaluation step (local to those
functions, not a process-wide flag; other backends ignore xla_cpu_* options). Two settings:

* xla_cpu_prefer_vector_width = 512: XLA:CPU may generate 512-bit vector code (these CPUs have
  AVX-512; XLA's default prefers 256-bit). Measured in one process, A B A B, 9 rounds: MLP epoch
  0.286 -> 0.251 s (-12%), CNN batch 128 step 44.9 -> 41.3 ms (-8%), gradients bit-identical on a
  real batch (same operations, wider registers).

* xla_cpu_experimental_ynn_fusion_type = matrix products and reductions only. By default XLA:CPU
  (jax 0.10) hands matrix products, reductions AND convolutions to YNNPACK fusions (`ynn_fusion` in
  the compiled HLO), and each of those runs on one core: a batch-128 CNN gradient took 25 ms whole
  and 13 ms for half the batch. Left out of the list, convolutions go to XLA's own kernels (Eigen),
  which split one convolution across both cores. The second conv at batch 128, forward / input
  gradient / kernel gradient: 4.9 / 4.8 / 9.5 ms in YNNPACK, 2.7 / 3.6 / 6.1 ms in XLA's kernels.
  Emptying the list altogether is worse: the bias gradients' large reductions then become slow
  reduce-window loops (Flax CNN step at batch 128, one process: 16.8 ms; 13.1 with them kept).
  Measured (2-core box, jitted CNN training step with Keras-convention Adam and the gradient in 2
  slices as trained, ms per step, medians of 27 interleaved steps, ranges over the hand-rolled and
  Flax steps and 2 processes on a shared machine; batch 256: Flax, one process):

                     default (convolutions in YNNPACK)   convolutions in XLA's kernels
    CNN batch  32                3.9-5.0                          3.6-4.9
    CNN batch  64                7.4-8.1                          6.6-7.0
    CNN batch 128               15.8-19.2                        13.2-17.0
    CNN batch 256                 51.3                             46.8

  Evaluation (CNN forward, batch 1000) is unchanged: 72.0 vs 71.5 ms. The MLP has no convolution:
  its compiled programs are identical with and without the setting (tested), so its numbers and
  the benchmark's bound are too. The two convolution kernels round differently: a conv_1 kernel
  gradient agrees to 2.6e-7 of its largest entry.

SCAN_UNROLL is the number of training steps per iteration of a `lax.scan` loop: unrolling by 2
halves the loop's per-iteration overhead. Measured on the 2-core box, MLP batch 32, 600 steps, one
process, A B A B: 0.309/0.315 s/epoch (unroll 1) vs 0.289/0.284 (unroll 2); 4 and 8 were no better
than 1 (0.30, 0.31). The steps and their order are unchanged, so the numbers are too (tested
against the Python loop of single steps).
"""

# YNNPACK keeps what it does well here; convolutions (LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,
# in the default list) are left to XLA's multi-threaded kernels.
YNN_FUSION_TYPES = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"

COMPILER_OPTIONS = {"xla_cpu_prefer_vector_width": 512, "xla_cpu_experimental_ynn_fusion_type": YNN_FUSION_TYPES}
SCAN_UNROLL = 2
