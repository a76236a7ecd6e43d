"""Layers as JAX pytrees: Linear, Conv2D, MaxPool2D, Flatten, Function, and Sequential.

As in the blog post, each layer is a plain Python class registered with
`jax.tree_util.register_pytree_node_class`. `tree_flatten` returns the layer's arrays (the
*children*, which JAX transforms: grad, jit, tree.map) and its hyperparameters (the *aux data*,
which JAX keeps as static, hashable metadata); `tree_unflatten` rebuilds the layer from both.
So a whole model is a pytree: `jax.grad(loss)(model, x, y)` returns a model-shaped pytree of
gradients, and an optimizer can `jax.tree.map` over model and gradients together.

`tree_unflatten` must not initialise or check the arrays: JAX calls it with tracers, and
sometimes with placeholder objects, in place of the arrays. Hence the post's `build=False` path.

Weights are float32 and use the Keras/Flax layouts (Dense kernel (in, out); conv kernel HWIO on
NHWC images). Initialisers come from `fmnist.initializers` (NumPy, `default_rng(seed)`), so the
formulas live in one place for all three implementations.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fmnist import initializers
from handrolled import conv
from handrolled.functional import flatten

__all__ = ["Linear", "Conv2D", "MaxPool2D", "Flatten", "Function", "Sequential"]


def _init_kernel(init: str, seed: int, shape: tuple[int, ...]) -> jax.Array:
    """Kernel of `shape` from the NumPy initialiser `init`, seeded by `default_rng(seed)`."""
    return jnp.asarray(initializers.get(init)(np.random.default_rng(seed), shape))


def _check_params(w, b, ndim: int, what: str):
    w, b = jnp.asarray(w), jnp.asarray(b)
    if w.ndim != ndim or b.shape != (w.shape[-1],):
        raise ValueError(f"{what}: expected a {ndim}-D kernel and a bias of shape (kernel.shape[-1],), "
                         f"got kernel {w.shape} and bias {b.shape}")
    return w, b


@jax.tree_util.register_pytree_node_class
class Linear:
    """Fully connected layer: y = x @ w + b, with w of shape (num_inputs, num_outputs).

    `init` names an initialiser in `fmnist.initializers` ("he_normal", the post's
    N(0, 2/num_inputs), by default; "glorot_uniform" is Keras's default); the bias starts at 0.
    `build=False` creates the layer without arrays, for `tree_unflatten` (as in the post);
    use `Linear.from_params(w, b)` to wrap existing arrays.
    """

    def __init__(self, num_inputs: int, num_outputs: int, init: str = "he_normal",
                 seed: int = 1234, *, build: bool = True):
        self.ni, self.no = int(num_inputs), int(num_outputs)
        if build:
            self.w = _init_kernel(init, seed, (self.ni, self.no))
            self.b = jnp.zeros((self.no,), jnp.float32)

    @classmethod
    def from_params(cls, w, b) -> "Linear":
        """A Linear layer holding kernel `w` (in, out) and bias `b` (out,), dtypes kept."""
        w, b = _check_params(w, b, 2, "Linear")
        layer = cls(*w.shape, build=False)
        layer.w, layer.b = w, b
        return layer

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.ni:
            raise ValueError(f"{self!r} got input with {x.shape[-1]} features")
        return jnp.dot(x, self.w) + self.b

    def params(self) -> dict[str, jax.Array]:
        return {"w": self.w, "b": self.b}

    def __repr__(self) -> str:
        return f"Linear(num_inputs={self.ni}, num_outputs={self.no})"

    def tree_flatten(self):
        return (self.w, self.b), (self.ni, self.no)

    @classmethod
    def tree_unflatten(cls, aux_data, children):
        layer = cls(*aux_data, build=False)
        layer.w, layer.b = children
        return layer


@jax.tree_util.register_pytree_node_class
class Conv2D:
    """2-D convolution on NHWC input with an HWIO kernel, plus bias:

        y[n, p, q, o] = b[o] + sum_{i, j, c} xpad[n, p*sh + i, q*sw + j, c] * w[i, j, c, o]

    `padding` "SAME" (output size ceil(H / stride); pad total//2 before and the rest after, as
    Keras and Flax) or "VALID" (no padding). `impl` chooses how the sum is computed, with the
    same result up to float32 rounding (~1e-6): "lax" (`lax.conv_general_dilated`, the default),
    "im2col" (patches + one matmul), or "shift" (the fast path's shift convolution, 3x3 SAME
    stride 1 only; `handrolled.conv`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1,
                 padding: str = "SAME", init: str = "he_normal", seed: int = 1234,
                 impl: str = "lax", *, build: bool = True):
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = conv.pair(kernel_size, "kernel_size")
        self.stride = conv.pair(stride, "stride")
        self.padding = conv.check_padding(padding)
        if impl not in conv.CONV_IMPLS:
            raise ValueError(f"impl must be one of {conv.CONV_IMPLS}, got {impl!r}")
        self.impl = impl
        if build:
            shape = (*self.kernel_size, self.in_channels, self.out_channels)
            self.w = _init_kernel(init, seed, shape)
            self.b = jnp.zeros((self.out_channels,), jnp.float32)

    @classmethod
    def from_params(cls, w, b, stride=1, padding: str = "SAME", impl: str = "lax") -> "Conv2D":
        """A Conv2D holding kernel `w` (kh, kw, in, out) and bias `b` (out,), dtypes kept."""
        w, b = _check_params(w, b, 4, "Conv2D")
        kh, kw, cin, cout = w.shape
        layer = cls(cin, cout, (kh, kw), stride, padding, impl=impl, build=False)
        layer.w, layer.b = w, b
        return layer

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"{self!r} expects NHWC input with {self.in_channels} channels, got {x.shape}")
        return conv.conv2d(x, self.w, self.stride, self.padding, self.impl) + self.b

    def params(self) -> dict[str, jax.Array]:
        return {"w": self.w, "b": self.b}

    def __repr__(self) -> str:
        return (f"Conv2D(in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}, "
                f"impl={self.impl!r})")

    def tree_flatten(self):
        aux = (self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.impl)
        return (self.w, self.b), aux

    @classmethod
    def tree_unflatten(cls, aux_data, children):
        cin, cout, kernel_size, stride, padding, impl = aux_data
        layer = cls(cin, cout, kernel_size, stride, padding, impl=impl, build=False)
        layer.w, layer.b = children
        return layer


@jax.tree_util.register_pytree_node_class
class MaxPool2D:
    """VALID max pooling on NHWC input: y[n, p, q, c] = max_{i<kh, j<kw} x[n, p*sh + i, q*sw + j, c].

    `stride` defaults to `window` (as Keras's `MaxPooling2D(2)`; note Flax's `nn.max_pool`
    defaults to stride 1). `impl`: "reshape" (reshape + jnp.max; the default when stride ==
    window), "reduce_window" (`lax.reduce_window`, any stride; the default otherwise), or
    "first_max" (the fast path's 2x2 pool).
    All give identical values; "reshape"'s gradient differs from the others only at tied maxima
    (see `handrolled.conv`).
    """

    def __init__(self, window=2, stride=None, impl: str | None = None):
        self.window = conv.pair(window, "window")
        self.stride = conv.pair(stride if stride is not None else self.window, "stride")
        if impl is None:  # reshape where the windows tile the image, reduce_window otherwise
            impl = "reshape" if self.stride == self.window else "reduce_window"
        if impl not in conv.POOL_IMPLS:
            raise ValueError(f"impl must be one of {conv.POOL_IMPLS}, got {impl!r}")
        if impl == "reshape" and self.stride != self.window:
            raise ValueError(f"impl='reshape' needs stride == window, got {self.stride} and {self.window}; "
                             "use impl='reduce_window'")
        if impl == "first_max" and (self.window, self.stride) != ((2, 2), (2, 2)):
            raise ValueError(f"impl='first_max' needs window and stride 2, got {self.window} and {self.stride}")
        self.impl = impl

    def __call__(self, x: jax.Array) -> jax.Array:
        return conv.max_pool2d(x, self.window, self.stride, self.impl)

    def __repr__(self) -> str:
        return f"MaxPool2D(window={self.window}, stride={self.stride}, impl={self.impl!r})"

    def tree_flatten(self):
        return (), (self.window, self.stride, self.impl)

    @classmethod
    def tree_unflatten(cls, aux_data, children):
        return cls(*aux_data)


@jax.tree_util.register_pytree_node_class
class Flatten:
    """(N, H, W, C) -> (N, H*W*C) in row-major NHWC order (see `handrolled.functional.flatten`)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return flatten(x)

    def __repr__(self) -> str:
        return "Flatten()"

    def tree_flatten(self):
        return (), None

    @classmethod
    def tree_unflatten(cls, aux_data, children):
        return cls()


@jax.tree_util.register_pytree_node_class
class Function:
    """A parameter-free layer that applies `fn` (like Keras's `Lambda`): y = fn(x).

    The function is aux data, not a child: it has no arrays for JAX to transform, and it is
    hashable, so `jit` can cache on it.
    """

    def __init__(self, fn: Callable[[jax.Array], jax.Array]):
        if not callable(fn):
            raise TypeError(f"Function needs a callable, got {fn!r}")
        self.fn = fn

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fn(x)

    def __repr__(self) -> str:
        return f"Function({getattr(self.fn, '__name__', repr(self.fn))})"

    def tree_flatten(self):
        return (), self.fn

    @classmethod
    def tree_unflatten(cls, aux_data, children):
        return cls(aux_data)


@jax.tree_util.register_pytree_node_class
class Sequential:
    """Layers applied in order: y = layer_k(... layer_2(layer_1(x))).

    Layers that are pytrees (have `tree_flatten`) are kept; any other callable, e.g. `relu`,
    is wrapped in `Function`, as in the post.

    Its children are the layers themselves. The post flattened each layer by hand and stored
    the treedefs as aux data; that is unnecessary, because children may be pytrees and JAX
    flattens them recursively.
    """

    def __init__(self, *layers):
        self.layers = []
        for layer in layers:
            if hasattr(layer, "tree_flatten"):
                self.layers.append(layer)
            elif callable(layer):
                self.layers.append(Function(layer))
            else:
                raise TypeError(f"Sequential layers must be callables, got {layer!r}")

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers:
            x = layer(x)
        return x

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    def __repr__(self) -> str:
        inner = "".join(f"    {layer!r},\n" for layer in self.layers)
        return f"Sequential(\n{inner})"

    def tree_flatten(self):
        return tuple(self.layers), None

    @classmethod
    def tree_unflatten(cls, aux_data, children):
        model = object.__new__(cls)  # skip __init__: children are already layers
        model.layers = list(children)
        return model
