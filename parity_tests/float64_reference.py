"""The float64 NumPy reference: every formula the parity suite checks, written out once, by hand.

Nothing here imports the implementations under test (not even `handrolled.conv.same_padding`), so
a bug shared by the project's code cannot hide in the reference. Everything is computed in float64
from float32 inputs: the float32 implementations differ from it only by their own rounding, which
is what the tolerances in the tests measure.

Layouts are the canonical ones (fmnist/weights.py): images NHWC, conv kernels HWIO, Dense kernels
(in, out), flatten in H, W, C order.
"""

from __future__ import annotations

import numpy as np

F64 = np.float64


def f64(a) -> np.ndarray:
    return np.asarray(a, dtype=F64)


# --------------------------------------------------------------------------- padding, conv, pool

def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's documented 'SAME' rule for one axis: output ceil(size / stride) and

        total = max((out - 1) * stride + kernel - size, 0); before = total // 2; after = total - before

    so an odd extra row/column of zeros goes at the bottom/right.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv_pads(hw, kernel_hw, stride_hw, padding: str):
    if padding.upper() == "VALID":
        return (0, 0), (0, 0)
    return tuple(same_pads(n, k, s) for n, k, s in zip(hw, kernel_hw, stride_hw))


def conv2d(x, kernel, bias, stride=(1, 1), padding="SAME"):
    """y[n,p,q,o] = b[o] + sum_{i,j,c} xpad[n, p*sh+i, q*sw+j, c] * K[i,j,c,o], float64.

    Computed as patches (one strided slice per kernel offset (i, j)) times the kernel reshaped to
    (kh*kw*cin, cout). Returns (y, cache) where cache is what `conv2d_backward` needs.
    """
    x, kernel, bias = f64(x), f64(kernel), f64(bias)
    kh, kw, cin, cout = kernel.shape
    sh, sw = stride
    (pt, pb), (pl, pr) = conv_pads(x.shape[1:3], (kh, kw), (sh, sw), padding)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    ho = (xp.shape[1] - kh) // sh + 1
    wo = (xp.shape[2] - kw) // sw + 1
    windows = [(slice(i, i + sh * (ho - 1) + 1, sh), slice(j, j + sw * (wo - 1) + 1, sw))
               for i in range(kh) for j in range(kw)]
    patches = np.concatenate([xp[:, rows, cols, :] for rows, cols in windows], axis=-1)
    y = patches @ kernel.reshape(kh * kw * cin, cout) + bias
    return y, (x.shape, xp.shape, patches, windows, kernel, (pt, pl))


def conv2d_backward(dy, cache):
    """Gradients (dx, dkernel, dbias) of sum(dy * conv2d(x, K, b)), float64."""
    x_shape, xp_shape, patches, windows, kernel, (pt, pl) = cache
    kh, kw, cin, cout = kernel.shape
    flat_dy = dy.reshape(-1, cout)
    dk = (patches.reshape(-1, kh * kw * cin).T @ flat_dy).reshape(kernel.shape)
    dpatches = dy @ kernel.reshape(kh * kw * cin, cout).T
    dxp = np.zeros(xp_shape)
    for n, (rows, cols) in enumerate(windows):
        dxp[:, rows, cols, :] += dpatches[..., n * cin:(n + 1) * cin]
    dx = dxp[:, pt:pt + x_shape[1], pl:pl + x_shape[2], :]
    return dx, dk, flat_dy.sum(axis=0)


def max_pool(x, window=(2, 2), stride=None):
    """VALID max pooling: y[n,p,q,c] = max_{i<kh, j<kw} x[n, p*sh+i, q*sw+j, c] (rows that do not
    fill a window are dropped)."""
    x = f64(x)
    kh, kw = window
    sh, sw = stride or window
    ho = (x.shape[1] - kh) // sh + 1
    wo = (x.shape[2] - kw) // sw + 1
    y = np.full((x.shape[0], ho, wo, x.shape[3]), -np.inf)
    for i in range(kh):
        for j in range(kw):
            y = np.maximum(y, x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :])
    return y


def max_pool_2x2_backward(dy, x):
    """Gradient of 2x2/2 max pooling: dy goes to the window's maximum, split evenly between ties
    (any split of a tie is a valid subgradient; in the models ties sit where relu already zeroes
    the gradient, or on identical input patches, so the parameter gradients do not depend on it)."""
    n, h, w, c = x.shape
    xw = x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)
    is_max = (xw == xw.max(axis=(2, 4), keepdims=True)).astype(F64)
    share = is_max / is_max.sum(axis=(2, 4), keepdims=True)
    dx = np.zeros_like(x)
    dx[:, :h // 2 * 2, :w // 2 * 2] = (share * dy[:, :, None, :, None, :]).reshape(n, h // 2 * 2, w // 2 * 2, c)
    return dx


def flatten(x):
    """(N, H, W, C) -> (N, H*W*C), row-major over H, W, C: Keras's Flatten on channels_last data."""
    return x.reshape(x.shape[0], -1)


def relu(z):
    return np.maximum(z, 0.0)


# --------------------------------------------------------------------------- softmax and losses

def log_softmax(z):
    """z - logsumexp(z) with the max shift: exact in float64 for any finite logits."""
    z = f64(z)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def softmax(z):
    return np.exp(log_softmax(z))


def sparse_xent_logits(labels, z):
    """Per-example logsumexp(z_i) - z_i[y_i]."""
    return -np.take_along_axis(log_softmax(z), np.asarray(labels)[:, None], axis=-1)[:, 0]


def sparse_xent_logits_grad(labels, z):
    """d/dz of the *mean* over the batch: (softmax(z) - onehot(y)) / N."""
    z = f64(z)
    g = softmax(z)
    g[np.arange(len(z)), labels] -= 1.0
    return g / len(z)


# --------------------------------------------------------------------------- the two models

def _w(weights):
    return {layer: {k: f64(v) for k, v in p.items()} for layer, p in weights.items()}


def forward(weights, x):
    """Logits of the mlp or cnn (chosen by the weights' layers) and the activations backprop needs."""
    w = _w(weights)
    acts = {"x": f64(x)}
    h = acts["x"]
    for layer in ("conv_0", "conv_1"):
        if layer in w:
            z, acts[f"{layer}_cache"] = conv2d(h, w[layer]["kernel"], w[layer]["bias"], (1, 1), "SAME")
            acts[f"{layer}_z"], acts[f"{layer}_a"] = z, relu(z)
            h = max_pool(acts[f"{layer}_a"])
    acts["pre_flatten_shape"] = h.shape
    acts["flat"] = h = flatten(h)
    acts["dense_0_z"] = h @ w["dense_0"]["kernel"] + w["dense_0"]["bias"]
    acts["dense_0_a"] = relu(acts["dense_0_z"])
    logits = acts["dense_0_a"] @ w["dense_1"]["kernel"] + w["dense_1"]["bias"]
    return logits, acts


def loss_and_grads(weights, x, labels):
    """Mean sparse cross-entropy from logits on one batch, and its gradient for every parameter
    (canonical layout), by hand-written backprop in float64."""
    w = _w(weights)
    logits, a = forward(weights, x)
    loss = float(np.mean(sparse_xent_logits(labels, logits)))
    grads = {}
    dz = sparse_xent_logits_grad(labels, logits)
    grads["dense_1"] = {"kernel": a["dense_0_a"].T @ dz, "bias": dz.sum(0)}
    dz = (dz @ w["dense_1"]["kernel"].T) * (a["dense_0_z"] > 0)
    grads["dense_0"] = {"kernel": a["flat"].T @ dz, "bias": dz.sum(0)}
    if "conv_0" in w:
        dh = (dz @ w["dense_0"]["kernel"].T).reshape(a["pre_flatten_shape"])
        for layer in ("conv_1", "conv_0"):
            dz_conv = max_pool_2x2_backward(dh, a[f"{layer}_a"]) * (a[f"{layer}_z"] > 0)
            dh, dk, db = conv2d_backward(dz_conv, a[f"{layer}_cache"])
            grads[layer] = {"kernel": dk, "bias": db}
        grads = {k: grads[k] for k in ("conv_0", "conv_1", "dense_0", "dense_1")}
    else:
        grads = {k: grads[k] for k in ("dense_0", "dense_1")}
    return loss, grads


# --------------------------------------------------------------------------- optimizers

def sgd(params, grads_seq, lr, momentum=0.0):
    """theta after every step of SGD: t = g + momentum * t; theta -= lr * t (t = g without momentum)."""
    p = {k: f64(v) for k, v in params.items()}
    trace = {k: np.zeros_like(v) for k, v in p.items()}
    out = []
    for g in grads_seq:
        for k in p:
            trace[k] = f64(g[k]) + momentum * trace[k]
            p[k] = p[k] - lr * trace[k]
        out.append({k: v.copy() for k, v in p.items()})
    return out


def adam_step(p, m, v, g, t, lr, b1=0.9, b2=0.999, eps=1e-7, convention="keras"):
    """One Adam step (t = 1, 2, ...) on float64 arrays; returns the new (p, m, v).

    "paper" (Kingma & Ba Algorithm 1, optax.adam): theta -= lr * m_hat / (sqrt(v_hat) + eps)
    "keras" (epsilon hat, Keras's Adam):          theta -= lr sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)
    """
    g = f64(g)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    if convention == "paper":
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    else:
        p = p - lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
    return p, m, v


def adam(params, grads_seq, lr, b1=0.9, b2=0.999, eps=1e-7, convention="keras"):
    """theta after every step of Adam on a fixed gradient sequence, in float64."""
    p = {k: f64(v) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    out = []
    for t, g in enumerate(grads_seq, start=1):
        for k in p:
            p[k], m[k], v[k] = adam_step(p[k], m[k], v[k], g[k], t, lr, b1, b2, eps, convention)
        out.append({k: x.copy() for k, x in p.items()})
    return out


def train_adam(weights, x, y, batches, lr, b1=0.9, b2=0.999, eps=1e-7, convention="keras", snapshots=()):
    """Train the mlp/cnn in float64 with Adam on index batches (K, B) of (x, y).

    Returns (losses before each step, {step: weights after that step} for each step in `snapshots`).
    """
    w = {layer: {k: f64(a) for k, a in p.items()} for layer, p in weights.items()}
    m = {layer: {k: np.zeros_like(a) for k, a in p.items()} for layer, p in w.items()}
    v = {layer: {k: np.zeros_like(a) for k, a in p.items()} for layer, p in w.items()}
    losses, saved = [], {}
    for t, idx in enumerate(batches, start=1):
        loss, grads = loss_and_grads(w, x[idx], y[idx])
        losses.append(loss)
        for layer in w:
            for k in w[layer]:
                w[layer][k], m[layer][k], v[layer][k] = adam_step(
                    w[layer][k], m[layer][k], v[layer][k], grads[layer][k], t, lr, b1, b2, eps, convention)
        if t in snapshots:
            saved[t] = {layer: {k: a.copy() for k, a in p.items()} for layer, p in w.items()}
    return np.array(losses), saved


# --------------------------------------------------------------------------- the shared inputs

def read_idx(path) -> np.ndarray:
    """An IDX file (gzip-compressed) as a NumPy array, from its header as the format defines it:
    two zero bytes, a type code (0x08 = uint8), the number of dimensions, then each dimension as a
    big-endian uint32, then the data in row-major order."""
    import gzip

    raw = gzip.decompress(open(path, "rb").read())
    assert raw[0] == 0 and raw[1] == 0 and raw[2] == 0x08, f"{path}: not an IDX uint8 file"
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    assert data.size == int(np.prod(shape)), f"{path}: {data.size} bytes for shape {shape}"
    return data.reshape(shape)


def pixels(images_uint8) -> np.ndarray:
    """uint8 (N, 28, 28) -> (N, 28, 28, 1) float32 of the exact quotient u / 255, rounded once to
    float32 (computed in float64, which holds u / 255 to 53 bits, then rounded)."""
    return (f64(images_uint8) / 255.0).astype(np.float32)[..., None]


def splits(directory, val_size, split_seed, train_limit=None, test_limit=None):
    """(x_train, y_train, x_val, y_val, x_test, y_test) as the project documents them: validation =
    the first `val_size` of `default_rng(split_seed).permutation(60000)` of the training files,
    training = the rest, in that order; then the first `train_limit` training and the first
    `test_limit` validation and test examples."""
    from pathlib import Path

    d = Path(directory)
    x, y = read_idx(d / "train-images-idx3-ubyte.gz"), read_idx(d / "train-labels-idx1-ubyte.gz")
    xt, yt = read_idx(d / "t10k-images-idx3-ubyte.gz"), read_idx(d / "t10k-labels-idx1-ubyte.gz")
    order = np.random.default_rng(split_seed).permutation(len(x))
    val, train = order[:val_size], order[val_size:][:train_limit]
    return (pixels(x[train]), y[train].astype(np.int32), pixels(x[val][:test_limit]),
            y[val][:test_limit].astype(np.int32), pixels(xt[:test_limit]), yt[:test_limit].astype(np.int32))


def batch_order(n, batch_size, seed, epoch) -> list[np.ndarray]:
    """Epoch `epoch`'s batches: `default_rng([seed, epoch]).permutation(n)` cut into runs of
    `batch_size`, the last one partial when `batch_size` does not divide n."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


# --------------------------------------------------------------------------- a whole run's history

def evaluate(weights, x, y):
    """(mean cross-entropy, accuracy) over every example, in float64."""
    z = forward(weights, x)[0]
    return float(np.mean(sparse_xent_logits(y, z))), float(np.mean(np.argmax(z, axis=-1) == y))


def train_history(weights, data, epochs, batch_size, seed, optimizer, lr, b1=0.9, b2=0.999, eps=1e-7):
    """Train in float64 and keep Keras's books: per epoch, the training loss and accuracy are means
    over the epoch's examples of each batch's values *before* its update (a batch of n examples
    counts n times); validation after each epoch; test at the end. `optimizer` is "sgd"
    (theta -= lr * g) or "adam" (Keras's epsilon-hat form, `adam_step`).

    `data` = (x_train, y_train, x_val, y_val, x_test, y_test). Returns (rows, test_loss, test_accuracy).
    """
    x, y, xv, yv, xt, yt = data
    w = _w(weights)
    m = {layer: {k: np.zeros_like(a) for k, a in p.items()} for layer, p in w.items()}
    v = {layer: {k: np.zeros_like(a) for k, a in p.items()} for layer, p in w.items()}
    rows, t = [], 0
    for epoch in range(epochs):
        loss_sum = correct = seen = 0.0
        for idx in batch_order(len(x), batch_size, seed, epoch):
            correct += float(np.sum(np.argmax(forward(w, x[idx])[0], axis=-1) == y[idx]))
            loss, grads = loss_and_grads(w, x[idx], y[idx])
            loss_sum, seen, t = loss_sum + loss * len(idx), seen + len(idx), t + 1
            for layer in w:
                for k in w[layer]:
                    if optimizer == "sgd":
                        w[layer][k] = w[layer][k] - lr * grads[layer][k]
                    else:
                        w[layer][k], m[layer][k], v[layer][k] = adam_step(
                            w[layer][k], m[layer][k], v[layer][k], grads[layer][k], t, lr, b1, b2, eps, "keras")
        val_loss, val_accuracy = evaluate(w, xv, yv)
        rows.append({"epoch": epoch + 1, "loss": loss_sum / seen, "accuracy": correct / seen,
                     "val_loss": val_loss, "val_accuracy": val_accuracy})
    return rows, *evaluate(w, xt, yt)
