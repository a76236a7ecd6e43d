"""XLA settings shared by the two JAX implementations and the benchmark's bound (plain data: this
module imports nothing, so `fmnist` stays framework-free).

COMPILER_OPTIONS is passed to every `jax.jit` of a training or evaluation step (local to those
functions, not a process-wide flag): XLA:CPU may then generate 512-bit vector code (these CPUs have
AVX-512; XLA's default prefers 256-bit). Measured in one process, A B A B, 9 rounds: MLP epoch
0.286 -> 0.251 s (-12%), CNN batch 128 step 44.9 -> 41.3 ms (-8%), gradients bit-identical on a real
batch (same operations, wider registers). Other backends ignore xla_cpu_* options.

SCAN_UNROLL is the number of training steps per iteration of a `lax.scan` loop: unrolling by 2
halves the loop's per-iteration overhead. Measured on the 2-core box, MLP batch 32, 600 steps, one
process, A B A B: 0.309/0.315 s/epoch (unroll 1) vs 0.289/0.284 (unroll 2); 4 and 8 were no better
than 1 (0.30, 0.31). The steps and their order are unchanged, so the numbers are too (tested
against the Python loop of single steps).
"""

COMPILER_OPTIONS = {"xla_cpu_prefer_vector_width": 512}
SCAN_UNROLL = 2
