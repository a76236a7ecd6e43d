"""XLA:CPU recomputes one HLO value in two fusions, and the two copies round differently.

Run: python docs/upstream/xla_cpu_recomputed_fusion.py   (CPU; jax 0.10.2 and 0.12.0.1 both show it)

`a` is computed once in the program (a 3x3 convolution written as 9 shifted multiply-adds, plus a
bias, relu); a 2x2 max-pool takes the max `m` of each window and then asks which element of the
window equals `m`. Mathematically at least one always does. XLA fuses the producer of `a` into
both consumers (the max fusion and the compare fusion, see the printed HLO) and recomputes it in
each; the two computations are compiled differently (FMA contraction: openxla/xla#41579), so in
some windows no element of the recomputed `a` equals the `m` computed from the other copy.

Expected: 0 windows. Seen on a 2-vCPU AMD EPYC (AVX-512), jax/jaxlib 0.10.2 and 0.12.0.1:
11857 of 401408 windows. (Written as an OR of the four compares instead of the select chain, the
same program gives 0 here: whether it shows depends on how each fusion is code-generated.)

Where the project met it: the first-max pool's custom VJP recorded the index this way, so on
jaxlib 0.12 the CNN's conv_0 gradient sent 4,824 windows' gradient to element 0 of the window
(3.3e-2 of max|g| off float64; 0.10 happened to compile the training program's two fusions alike).
The fix (handrolled.conv._first_max, flax_impl.models.max_pool_2x2) is a running argmax: the index
comes from the same comparisons that choose the max, so it always points at a maximum.
"""
import numpy as np
import jax
import jax.numpy as jnp

rng = np.random.default_rng(0)
x = rng.random((64, 28, 28, 1), dtype=np.float32)
w = rng.normal(size=(3, 3, 1, 32)).astype(np.float32) * 0.3
b = rng.normal(size=(32,)).astype(np.float32) * 0.1


def conv3x3(x, w):  # SAME 3x3 convolution, one input channel, as 9 broadcast multiply-adds
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    terms = [xp[:, i:i + 28, j:j + 28, :] * w[i, j, 0] for i in range(3) for j in range(3)]
    y = terms[0]
    for t in terms[1:]:
        y = y + t
    return y


def pool_and_argmax(x, w, b):
    a = jnp.maximum(conv3x3(x, w) + b, 0.0)
    windows = a.reshape(64, 14, 2, 14, 2, 32)
    views = [windows[:, :, i, :, j, :] for i in range(2) for j in range(2)]
    m = jnp.maximum(jnp.maximum(jnp.maximum(views[0], views[1]), views[2]), views[3])
    first = jnp.full(m.shape, -1, jnp.int8)  # index of the first element equal to the max, or -1
    for t in (3, 2, 1, 0):
        first = jnp.where(views[t] == m, jnp.int8(t), first)
    return m, first >= 0


compiled = jax.jit(pool_and_argmax).lower(x, w, b).compile()
print("\n".join(line[:160] for line in compiled.as_text().splitlines() if " fusion(" in line))
m, found = compiled(x, w, b)
print(f"jax {jax.__version__}: windows where no element equals the window's max: "
      f"{int((~np.asarray(found)).sum())} of {found.size} (expected 0)")
