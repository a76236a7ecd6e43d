"""fmnist.xla: which compiler options a training step gets, and that the kernel switch takes effect."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmnist.xla import CNN_XLA_KERNELS_MIN_BATCH, COMPILER_OPTIONS, XLA_KERNELS, train_compiler_options


def test_only_large_cnn_batches_use_xla_kernels():
    assert train_compiler_options("mlp", 32) == COMPILER_OPTIONS
    assert train_compiler_options("mlp", 4096) == COMPILER_OPTIONS  # measured: no clear winner
    assert train_compiler_options("cnn", 32) == COMPILER_OPTIONS
    assert train_compiler_options("cnn", CNN_XLA_KERNELS_MIN_BATCH - 1) == COMPILER_OPTIONS
    assert train_compiler_options("cnn", CNN_XLA_KERNELS_MIN_BATCH) == {**COMPILER_OPTIONS, **XLA_KERNELS}
    train_compiler_options("mlp", 32)["scratch"] = 1  # a fresh dict each time, not the shared one
    assert "scratch" not in COMPILER_OPTIONS


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="xla_cpu_* options only act on XLA:CPU")
def test_xla_kernels_replace_the_ynnpack_fusions_with_the_same_gradient():
    """The option does what fmnist/xla.py says: the compiled conv gradient has YNNPACK fusions by
    default and none with XLA_KERNELS; the numbers agree to float32 rounding."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((16, 14, 14, 32), dtype=np.float32))
    w = jnp.asarray(rng.standard_normal((3, 3, 32, 64), dtype=np.float32) * 0.1)

    def loss(w, x):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jax.nn.relu(y) ** 2)

    grads, texts = [], []
    for options in (COMPILER_OPTIONS, {**COMPILER_OPTIONS, **XLA_KERNELS}):
        compiled = jax.jit(jax.grad(loss), compiler_options=options).lower(w, x).compile()
        texts.append(compiled.as_text())
        grads.append(np.asarray(compiled(w, x)))
    assert "ynn_fusion" in texts[0] and "ynn_fusion" not in texts[1]
    # two kernel libraries, two summation orders over 16*14*14 = 3136 products per entry;
    # measured 2.6e-7 of the largest entry (float32 eps is 1.2e-7); a wrong gradient is O(1) off
    assert np.max(np.abs(grads[0] - grads[1])) < 1e-5 * np.max(np.abs(grads[0]))
