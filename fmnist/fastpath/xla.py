"""XLA settings of the fast path (plain data; JAX is imported only to check which compiler
options the installed jaxlib accepts). The measurements behind every value: docs/performance.md.

* COMPILER_OPTIONS, passed to every `jax.jit` of the fast path (local to those functions, not a
  process-wide flag; other backends ignore xla_cpu_* options):
  - xla_cpu_prefer_vector_width = 512: 512-bit vector code (these CPUs have AVX-512).
  - xla_cpu_experimental_ynn_fusion_type = matrix products and reductions only, so that
    convolutions run in XLA's own multi-threaded kernels rather than one-core YNNPACK fusions.
* SCAN_UNROLL: training steps per iteration of a `lax.scan` loop.
* SCAN_BY_MODEL: whether a model's K steps per call are one `lax.scan` or a Python loop of single
  compiled steps (XLA:CPU runs convolution gradients inside loop bodies far slower, jax-ml/jax#12868).
* GRAD_PARTS_BY_MODEL: how many slices a step's gradient is computed in (`fastpath.steps.in_slices`);
  one device's setting (data parallel, each device computes its rows' gradient in one piece).
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

SCAN_BY_MODEL = {"mlp": True, "cnn": False}

GRAD_PARTS_BY_MODEL = {"mlp": 1, "cnn": 2}


def fast_path(model: str, devices: int = 1) -> dict:
    """`make_run_steps` keywords for `model` ("mlp" or "cnn"): {"scan": ..., "grad_parts": ...}.

    Data parallel over `devices > 1` devices, the gradient is one piece per device: the devices are
    the slices. (Slicing a batch whose rows are split over the devices makes each slice live on
    some of them only; XLA then moves rows between the devices: 153 ms per CNN step at batch 128 on
    2 forced CPU devices, against 46 ms in one piece, docs/performance.md.)"""
    return {"scan": SCAN_BY_MODEL[model], "grad_parts": GRAD_PARTS_BY_MODEL[model] if devices == 1 else 1}
