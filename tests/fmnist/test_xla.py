"""fmnist.fastpath.xla: the compiler options do what its docstring says, on XLA:CPU."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmnist.fastpath.xla import COMPILER_OPTIONS

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="xla_cpu_* options act on XLA:CPU only")

# The same settings without the YNNPACK one: XLA:CPU's default fusion list.
DEFAULT_YNN = {k: v for k, v in COMPILER_OPTIONS.items() if k != "xla_cpu_experimental_ynn_fusion_type"}


def compiled_text(fn, options, *args) -> str:
    text = jax.jit(fn, compiler_options=options).lower(*args).compile().as_text()
    return re.sub(r", metadata=\{[^}]*\}", "", text)  # source locations differ between two jits


def ynn_bodies(text: str) -> list[str]:
    """The bodies of the computations that the compiled program's YNNPACK fusions call."""
    return [re.search(r"%" + re.escape(called) + r" \([^\n]*\{\n(.*?)\n\}", text, re.S).group(1)
            for called in re.findall(r"%ynn_fusion[.\d]* = [^\n]*calls=%(\S+?)[,\s]", text)]


def ynn_fusion_ops(text: str) -> set[str]:
    """The root operations of the computations the compiled program's YNNPACK fusions call."""
    return {op for body in ynn_bodies(text) for op in re.findall(r"ROOT %\S+ = \S+ ([a-z-]+)\(", body)}


def ops_outside_ynn(text: str) -> set[str]:
    """The operations of the compiled program that no YNNPACK fusion contains."""
    for body in ynn_bodies(text):
        text = text.replace(body, "")
    return set(re.findall(r"= \S+ ([a-z-]+)\(", text))


READOUT = jnp.asarray(np.random.default_rng(1).standard_normal((14 * 14 * 64, 3), dtype=np.float32) * 0.01)


def conv_layer_loss(w, b, x):
    """A conv layer with bias and relu, then a dense readout: conv, dot and bias reductions."""
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = jax.nn.relu(y + b)
    return jnp.sum((y.reshape(len(x), -1) @ READOUT) ** 2)


@pytest.fixture(scope="module")
def conv_problem():
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.standard_normal((3, 3, 32, 64), dtype=np.float32) * 0.1),
            jnp.asarray(rng.standard_normal(64, dtype=np.float32) * 0.1),
            jnp.asarray(rng.standard_normal((16, 14, 14, 32), dtype=np.float32)))


def test_convolutions_leave_ynnpack_while_products_and_reductions_stay(conv_problem):
    grad = jax.grad(conv_layer_loss, argnums=(0, 1))
    default = compiled_text(grad, DEFAULT_YNN, *conv_problem)
    ours = compiled_text(grad, COMPILER_OPTIONS, *conv_problem)
    # what XLA:CPU (jax 0.10) does by default: every convolution inside a YNNPACK fusion
    assert {"convolution", "dot", "reduce"} <= ynn_fusion_ops(default)
    assert "convolution" not in ops_outside_ynn(default)
    # with COMPILER_OPTIONS: products and reductions stay, the convolutions are XLA's own operations
    assert ynn_fusion_ops(ours) == {"dot", "reduce"}
    assert "convolution" in ops_outside_ynn(ours)


def test_the_two_convolution_kernels_compute_the_same_gradient(conv_problem):
    got = [jax.jit(jax.grad(conv_layer_loss, argnums=(0, 1)), compiler_options=options)(*conv_problem)
           for options in (DEFAULT_YNN, COMPILER_OPTIONS)]
    for a, b in zip(*got):
        # two kernel libraries, two summation orders over 16*14*14 = 3136 products per kernel entry:
        # measured 4.8e-7 of the largest entry (kernel), 0 (bias); float32 eps is 1.2e-7; wrong is O(1)
        assert np.max(np.abs(a - b)) < 1e-5 * np.max(np.abs(a))


def test_the_mlp_programs_do_not_change():
    """No convolution in the MLP: its training step, alone and as a scan of steps (the fast path),
    compiles to the same program either way, so the setting cannot change the MLP's numbers. (The
    benchmark's bound, matrix products and Adam, has no convolution either.)"""
    from fmnist.config import TrainConfig
    from fmnist.weights import init_weights
    from handrolled import train as ht
    from handrolled.models import from_weights

    config = TrainConfig(model="mlp")
    optimizer, model = ht.make_optimizer(config), from_weights("mlp", init_weights("mlp"))
    x, y = jnp.zeros((64, 28, 28, 1)), jnp.zeros(64, jnp.int32)
    batches = jnp.zeros((4, 32), jnp.int32)

    def step(state, x, y):
        return ht.train_step(state, x, y, optimizer)

    def scan_steps(state, x, y, batches):
        def body(state, idx):
            state, loss, correct = step(state, x[idx], y[idx])
            return state, (loss, correct)
        return jax.lax.scan(body, state, batches)

    for fn, args in ((step, ((model, optimizer.init(model)), x, y)),
                     (scan_steps, ((model, optimizer.init(model)), x, y, batches))):
        texts = [compiled_text(fn, options, *args) for options in (DEFAULT_YNN, COMPILER_OPTIONS)]
        assert ynn_fusion_ops(texts[0]) == {"dot", "reduce"}
        assert texts[0] == texts[1]


def test_every_wanted_option_is_in_force():
    """The pinned jaxlibs (0.10.2 on Python 3.11, 0.12.0.1 on 3.12+) accept both options, so none
    is silently dropped; a jaxlib that renames one fails here, by name, not in every compile."""
    from fmnist.fastpath.xla import WANTED_OPTIONS, accepted_options

    assert COMPILER_OPTIONS == WANTED_OPTIONS, f"dropped by jaxlib {jax.__version__}: {set(WANTED_OPTIONS) - set(COMPILER_OPTIONS)}"
    assert accepted_options({"xla_cpu_no_such_option": 1}) == {}
