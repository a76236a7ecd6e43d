"""XLA settings shared by the JAX implementations and the benchmark's bound (plain data; JAX is
imported only to check which compiler options the installed jaxlib accepts).

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

  The ranges overlap because the machine is shared; in each of the 4 same-process pairs the XLA
  kernels were faster: batch 32 by 1-7%, batch 64 by 7-19%, batch 128 by 6-31%.
  Evaluation (CNN forward, batch 1000) is unchanged: 72.0 vs 71.5 ms. The MLP has no convolution:
  its compiled training programs (a step, and a scan of steps) are identical with and without the
  setting (tested), and the benchmark's bound (products and Adam) has none either. The two
  convolution kernels round differently: the conv layer's kernel gradient in tests/fmnist/test_xla.py
  agrees to 4.8e-7 of its largest entry.

Re-measured on jaxlib 0.12.0.1 beside 0.10.2 (2026-12-03, a slower box, load ~1; Flax CNN training
step at batch 128 in 2 slices, ms per step, medians of 9 interleaved rounds, one process per jaxlib):

                     no options   vector width   YNNPACK list   both (COMPILER_OPTIONS)
    jaxlib 0.10.2       47.3          45.4           35.3           34.6
    jaxlib 0.12.0.1     40.2          38.2           36.0           34.9

jaxlib 0.12's own YNNPACK convolutions are faster than 0.10's (40.2 vs 47.3 with no options), so
the YNNPACK setting gains less there (10% against 25%), but both settings still help and the two
stacks end level. The MLP's 100-step scan is unchanged by either, on both (0.21-0.22 ms per step).

SCAN_BY_MODEL, GRAD_PARTS_BY_MODEL and `fast_path` are the fast-path settings both JAX
implementations' `make_run_steps` take; the measurements are at the definitions.

SCAN_UNROLL is the number of training steps per iteration of a `lax.scan` loop: unrolling by 2
halves the loop's per-iteration overhead. Measured on the 2-core box, MLP batch 32, 600 steps, one
process, A B A B: 0.309/0.315 s/epoch (unroll 1) vs 0.289/0.284 (unroll 2); 4 and 8 were no better
than 1 (0.30, 0.31). The steps and their order are unchanged, so the numbers are too (tested
against the Python loop of single steps).
"""

# YNNPACK keeps what it does well here; convolutions (LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,
# in the default list) are left to XLA's multi-threaded kernels.
YNN_FUSION_TYPES = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"

# What the fast path asks for. Both names exist, and act the same, in jaxlib 0.10.2 and 0.12.0.1
# (tests/fmnist/test_xla.py checks it for the installed one); `xla_cpu_*` options are experimental
# and a later jaxlib may drop or rename them, and an unknown name makes every compile fail
# ("No such compile option"), so COMPILER_OPTIONS keeps only those the installed jaxlib accepts.
WANTED_OPTIONS = {"xla_cpu_prefer_vector_width": 512, "xla_cpu_experimental_ynn_fusion_type": YNN_FUSION_TYPES}


def accepted_options(options: dict) -> dict:
    """The entries of `options` that the installed jaxlib accepts, each tried on a one-op compile."""
    import jax  # here, not at the top: `fmnist` stays importable without JAX
    import numpy as np

    def accepted(name, value):
        try:
            jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(np.float32(0)).compile()
            return True
        except Exception as e:  # jaxlib raises JaxRuntimeError; match its message, not the type
            if "No such compile option" in str(e) or "INVALID_ARGUMENT" in str(e):
                return False
            raise
    return {k: v for k, v in options.items() if accepted(k, v)}


COMPILER_OPTIONS = accepted_options(WANTED_OPTIONS)
SCAN_UNROLL = 2

# Whether `make_run_steps` scans the K steps of a call (True) or loops over single jitted steps
# (False). Measured on this 2-core CPU (jax 0.10.2), Flax, K = 100 steps per call, Keras-convention
# Adam, ms per step after the compiling call (ranges: repeated runs on a shared machine):
#                     scan       loop
#   MLP batch 32      0.09       0.14     the loop pays ~0.05 ms of dispatch per step -> scan
#   CNN batch 32    104-137     5.6-8.4   convolution gradients inside a scan body are 12-18x
#   CNN batch 128     755        41-42    slower on XLA:CPU (jax-ml/jax#12868) -> loop
# The CNN scan also compiles slower (first call minus steady state: ~4 s vs 1-1.6 s at batch 32,
# ~37 s vs 1-1.5 s at batch 128). The loop still keeps the data on the device and gathers batches
# there; it adds one dispatch per step. Re-measured with the first-max pool and ShiftConv, CNN batch
# 128, K = 10: loop 45.4 ms/step, scan 867 ms/step; and with the convolutions in XLA's kernels
# (COMPILER_OPTIONS), CNN batch 32, K = 10: loop 4.5, scan 82 ms/step. Still the loop.
SCAN_BY_MODEL = {"mlp": True, "cnn": False}

# How many slices each step's gradient is computed in (`loss_and_grads` in both implementations):
# the slices' computations are independent, so XLA:CPU runs them side by side, one core each,
# which keeps both cores busy through the CNN's one-core-per-operation element-wise work. The
# MLP's small matrix products gain nothing from it. CNN step, whole batch -> 2 slices, paired
# (same process, interleaved; hand-rolled and Flax, 2 processes: 4 pairs), convolutions in XLA's
# kernels: batch 128, 4-39% faster (e.g. 14.7 -> 13.2 ms); batch 64, 4-5%; batch 32, -5% to +15%
# (no consistent gain there, no loss either). With the convolutions in YNNPACK it was the main
# gain: whole-batch gradient at batch 128 23.0 ms vs 14.8 ms in 2 slices (16.7 in 4).
GRAD_PARTS_BY_MODEL = {"mlp": 1, "cnn": 2}


def fast_path(model: str) -> dict:
    """`make_run_steps` keywords for `model` ("mlp" or "cnn"): {"scan": ..., "grad_parts": ...}."""
    return {"scan": SCAN_BY_MODEL[model], "grad_parts": GRAD_PARTS_BY_MODEL[model]}
