"""`pooling-defaults`: the same three words, `Conv`, `max_pool`, `MaxPooling2D`, build three networks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmnist.app.explain.common import figure, import_keras, save

STAGES = ("input", "conv 3x3x32", "pool 2", "conv 3x3x64", "pool 2")


def _project_shapes() -> list[tuple]:
    """Feature-map shapes of the project's CNN (hand-rolled layers, traced without computing)."""
    import jax

    from fmnist.weights import init_weights
    from handrolled.layers import Conv2D, MaxPool2D
    from handrolled.models import from_weights

    x = jax.ShapeDtypeStruct((1, 28, 28, 1), np.float32)
    shapes = [x.shape]
    for layer in from_weights("cnn", init_weights("cnn")).layers:
        x = jax.eval_shape(layer, x)
        if isinstance(layer, (Conv2D, MaxPool2D)):
            shapes.append(x.shape)
    return shapes


def _flax_default_shapes() -> tuple[list[tuple], tuple, tuple]:
    """Shapes with Flax's defaults: nn.Conv(features, (3, 3)) (padding 'SAME'), nn.max_pool(x, (2, 2))
    (strides (1, 1)); plus the pool with strides=(2, 2), and the kernel nn.Conv(32, 3) builds."""
    import jax
    import flax.linen as nn

    key = jax.random.key(0)
    conv = lambda n: (lambda x: nn.Conv(n, (3, 3)).init_with_output(key, x)[0])  # noqa: E731
    pool = lambda x: nn.max_pool(x, (2, 2))  # noqa: E731
    x = jax.ShapeDtypeStruct((1, 28, 28, 1), np.float32)
    shapes = [x.shape]
    for fn in (conv(32), pool, conv(64), pool):
        x = jax.eval_shape(fn, x)
        shapes.append(x.shape)
    image = jax.ShapeDtypeStruct((1, 28, 28, 1), np.float32)
    strided = jax.eval_shape(lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)), image)
    int_kernel = jax.eval_shape(lambda x: nn.Conv(32, 3).init(key, x), image)
    return shapes, strided.shape, int_kernel["params"]["kernel"].shape


def _keras_default_shapes() -> tuple[list[tuple], tuple, str]:
    """Shapes with Keras's defaults, Conv2D(n, 3) ('valid') and MaxPooling2D(2) (strides = pool size),
    from the real layers if Keras is installed, else from the same rules written out; plus
    MaxPooling2D(2) on the 28x28 input."""
    keras = import_keras()
    shape = (1, 28, 28, 1)
    shapes = [shape]
    if keras is not None:
        for layer in (keras.layers.Conv2D(32, 3), keras.layers.MaxPooling2D(2),
                      keras.layers.Conv2D(64, 3), keras.layers.MaxPooling2D(2)):
            shape = tuple(layer.compute_output_shape(shape))
            shapes.append(shape)
        pooled = tuple(keras.layers.MaxPooling2D(2).compute_output_shape((1, 28, 28, 1)))
        return shapes, pooled, f"keras {keras.__version__} layers"
    from handrolled.conv import conv_output_size

    for kind, channels in (("conv", 32), ("pool", 32), ("conv", 64), ("pool", 64)):
        k, s = (3, 1) if kind == "conv" else (2, 2)
        size = conv_output_size(shape[1], k, s, "VALID")
        shape = (1, size, size, channels)
        shapes.append(shape)
    pooled = (1, conv_output_size(28, 2, 2, "VALID"), conv_output_size(28, 2, 2, "VALID"), 1)
    return shapes, pooled, "Keras not installed: its documented defaults ('valid', strides = pool size)"


def pooling_defaults(out: Path, say) -> dict:
    project = _project_shapes()
    flax_shapes, flax_strided, int_kernel = _flax_default_shapes()
    keras_shapes, keras_pooled, keras_source = _keras_default_shapes()
    nets = {"project CNN (SAME conv, pool 2 stride 2)": project,
            "Keras defaults: Conv2D(n, 3), MaxPooling2D(2)": keras_shapes,
            "Flax defaults: nn.Conv(n, (3, 3)), nn.max_pool(x, (2, 2))": flax_shapes}
    flatten = {name: int(np.prod(shapes[-1][1:])) for name, shapes in nets.items()}
    keys = ("project", "keras_defaults", "flax_defaults")
    result = {"flax_max_pool_default": flax_shapes[2][1:3], "flax_max_pool_stride_2": flax_strided[1:3],
              "keras_max_pool": keras_pooled[1:3], "keras_conv_valid": keras_shapes[1][1:3],
              "flax_conv_same": flax_shapes[1][1:3], "flax_int_kernel_size": tuple(int_kernel),
              "flatten": dict(zip(keys, flatten.values())),
              "dense_0_weights": {k: v * 128 for k, v in zip(keys, flatten.values())}, "keras_source": keras_source}

    say(f"On a 28x28 image: nn.max_pool(x, (2, 2)) -> {result['flax_max_pool_default'][0]}x"
        f"{result['flax_max_pool_default'][1]} (strides default to 1: overlapping windows); "
        f"with strides=(2, 2) -> {flax_strided[1]}x{flax_strided[2]}; Keras MaxPooling2D(2) -> "
        f"{result['keras_max_pool'][0]}x{result['keras_max_pool'][1]} (strides default to the pool size).")
    say(f"Conv 3x3: Keras Conv2D pads 'valid' -> {result['keras_conv_valid'][0]}x{result['keras_conv_valid'][1]}, "
        f"Flax nn.Conv pads 'SAME' -> {result['flax_conv_same'][0]}x{result['flax_conv_same'][1]}. And "
        f"nn.Conv(32, 3) is a 1-D convolution: kernel {result['flax_int_kernel_size']}, not (3, 3, 1, 32).")
    say(f"Two conv+pool blocks, then flatten ({keras_source}):")
    for name, shapes in nets.items():
        sizes = " -> ".join(f"{s[1]}x{s[2]}x{s[3]}" for s in shapes)
        say(f"  {name:<58} {sizes}: flatten {flatten[name]:>6}, dense_0 {flatten[name] * 128:>9,} weights")
    say("The project writes every stride and padding out (SAME convs, 2x2 pools of stride 2 -> 7*7*64 = 3136) "
        "in all implementations, so one canonical weight file fits them all.")

    fig, (ax_s, ax_f) = figure(2)
    colors = ("tab:blue", "tab:green", "tab:orange")
    for (name, shapes), color, marker in zip(nets.items(), colors, "oxs"):
        ax_s.plot(range(len(shapes)), [s[1] for s in shapes], marker=marker, color=color, label=name)
    ax_s.set_xticks(range(len(STAGES)), STAGES, fontsize=8)
    ax_s.set(ylabel="height = width", title="feature-map size after each layer")
    ax_s.legend(fontsize=8)
    bars = ax_f.bar(range(3), list(flatten.values()), color=colors)
    ax_f.bar_label(bars, [f"{v:,}" for v in flatten.values()], fontsize=8)
    ax_f.set_yscale("log")
    ax_f.set_xticks(range(3), ["project", "Keras defaults", "Flax defaults"])
    ax_f.set(ylabel="flattened features (dense_0 inputs)", title="what Flatten hands to the first Dense")
    result["picture"] = save(fig, out, "pooling-defaults", "pooling and padding defaults: Flax vs Keras")
    return result
