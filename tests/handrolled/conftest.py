"""Shared fixtures for the hand-rolled JAX tests.

Float64 checks run inside the `x64` fixture, which enables 64-bit JAX only for that test
(`jax.enable_x64(True)` is a context manager); the autouse guard fails any test that leaks
x64 into the rest of the suite.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _no_x64_leak():
    assert not jax.config.jax_enable_x64, "x64 was left enabled by an earlier test"
    yield
    assert not jax.config.jax_enable_x64, "this test left x64 enabled"


@pytest.fixture
def x64():
    """Enable float64 in JAX for the duration of one test."""
    with jax.enable_x64(True):
        assert jnp.zeros(1).dtype == jnp.float64
        yield


def _directional_fd_check(f, args, argnum, rng, n_dirs=3, h=1e-6, rtol=1e-6):
    """Compare <grad f, v> with the central difference (f(a + h v) - f(a - h v)) / 2h, float64.

    Why these numbers: in float64 the central difference has truncation error ~h^2 |f'''| ~ 1e-12
    and rounding error ~eps64 |f| / h ~ 2e-10 |f|, both far below rtol = 1e-6; a wrong gradient
    (a missing term, a transposed kernel, a wrong padding offset) is off by O(1) relative.
    """
    args = [jnp.asarray(a) for a in args]
    assert all(a.dtype == jnp.float64 for a in args), "run the check under the x64 fixture"
    f = jax.jit(f)  # one compile instead of one per eager op per call: keeps the suite fast
    grad = np.asarray(jax.jit(jax.grad(f, argnums=argnum))(*args))
    for _ in range(n_dirs):
        v = rng.standard_normal(args[argnum].shape)
        plus, minus = list(args), list(args)
        plus[argnum] = args[argnum] + h * v
        minus[argnum] = args[argnum] - h * v
        fd = (float(f(*plus)) - float(f(*minus))) / (2 * h)
        analytic = float(np.sum(grad * v))
        assert abs(fd - analytic) <= rtol * max(1.0, abs(analytic)), (argnum, fd, analytic)


@pytest.fixture
def fd_check(rng):
    """fd_check(f, args, argnum): directional finite-difference gradient check in float64."""
    return lambda f, args, argnum, **kw: _directional_fd_check(f, args, argnum, rng, **kw)
