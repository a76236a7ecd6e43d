"""Fashion-MNIST, offline and verified, plus the batch order every implementation shares.

`load_data()` returns exactly what `keras.datasets.fashion_mnist.load_data()` returns, but it reads
the four IDX files from disk itself and never downloads. Every file's *decoded* bytes are checked
against SHA-256 digests recorded here, so a truncated, corrupt or swapped file is caught with a
message that says what to do (Debian recompresses the .gz files, so the upstream .gz MD5s cannot be
used; the decoded content is what matters and is identical).

`preprocess()` does x / 255 once, in NumPy, so every implementation trains on bit-identical
float32 inputs (XLA and Keras's `Rescaling` compile `x / 255` to `x * (1/255)`, which differs from
IEEE division in the last bit for 126 of the 256 pixel values).

`Dataloader` defines the one batch order: epoch `e` of a shuffled loader with seed `s` visits the
examples in `np.random.default_rng([s, e]).permutation(n)`. Keras is fed the same order.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"


@dataclasses.dataclass(frozen=True)
class IdxFile:
    """One of the four files: its name, the IDX header it must have, and its decoded digest."""

    name: str
    magic: int  # 0x0801: uint8 vector (labels); 0x0803: uint8 3-D array (images)
    shape: tuple[int, ...]
    sha256: str  # of the decoded (gunzipped) bytes, header included


FILES = {
    "train_images": IdxFile("train-images-idx3-ubyte.gz", 0x0803, (60000, 28, 28),
                            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train_labels": IdxFile("train-labels-idx1-ubyte.gz", 0x0801, (60000,),
                            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "test_images": IdxFile("t10k-images-idx3-ubyte.gz", 0x0803, (10000, 28, 28),
                           "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "test_labels": IdxFile("t10k-labels-idx1-ubyte.gz", 0x0801, (10000,),
                           "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}

HOW_TO_INSTALL = (
    f"Install it with `sudo apt-get install -y {DEBIAN_PACKAGE}` (files land in {DEBIAN_DIR}), "
    "or put the four original IDX .gz files in a directory and set FASHION_MNIST_DIR to it."
)


class DataError(Exception):
    """The dataset is missing or damaged. The message names the file and says how to fix it."""


# --------------------------------------------------------------------------- finding the files

def candidate_dirs(path: str | os.PathLike | None = None) -> list[Path]:
    """Where `load_data` looks, in order: `path`, $FASHION_MNIST_DIR, Debian's directory, Keras's cache."""
    dirs = []
    if path is not None:
        dirs.append(Path(path))
    if os.environ.get("FASHION_MNIST_DIR"):
        dirs.append(Path(os.environ["FASHION_MNIST_DIR"]))
    dirs.append(DEBIAN_DIR)
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    dirs.append(keras_home / "datasets" / "fashion-mnist")
    return dirs


def find_data_dir(path: str | os.PathLike | None = None) -> Path:
    """The first candidate directory that holds at least one of the four files.

    An explicit `path` is never silently skipped: if it is given and holds nothing, that is an error.
    """
    names = [f.name for f in FILES.values()]
    if path is not None and not any((Path(path) / n).exists() for n in names):
        raise DataError(f"No Fashion-MNIST files in {path} (expected {', '.join(names)}). "
                        + HOW_TO_INSTALL)
    for d in candidate_dirs(path):
        if any((d / n).exists() for n in names):
            return d
    looked = ", ".join(str(d) for d in candidate_dirs(path))
    raise DataError(f"Fashion-MNIST not found (looked in {looked}). " + HOW_TO_INSTALL)


# --------------------------------------------------------------------------- reading IDX

def read_idx(file: Path, spec: IdxFile, verify: bool = True) -> np.ndarray:
    """Decode one gzipped IDX file into a uint8 array, checking header, length and digest.

    IDX layout: 2 zero bytes, 1 type byte (0x08 = uint8), 1 byte with the number of dimensions,
    then each dimension as a big-endian uint32, then the payload in C order.
    """
    fix = f"Reinstall it (`sudo apt-get install --reinstall -y {DEBIAN_PACKAGE}`) or replace the file."
    if not file.exists():
        raise DataError(f"{file} is missing. " + HOW_TO_INSTALL)
    try:
        with gzip.open(file, "rb") as f:
            raw = f.read()
    except PermissionError:
        raise DataError(f"{file} exists but cannot be read by this user (permission denied): "
                        "fix its permissions or copy the files elsewhere and set FASHION_MNIST_DIR.") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{file} is not a readable gzip file ({e}); it is truncated or corrupt. "
                        + fix) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{file} does not start with an IDX header (got {raw[:4].hex() or 'nothing'}). "
                        + fix)
    magic = int.from_bytes(raw[:4], "big")
    if magic != spec.magic:
        kind = {0x0801: "labels (1-D)", 0x0803: "images (3-D)"}
        raise DataError(f"{file} holds IDX type 0x{magic:04x}, expected 0x{spec.magic:04x} "
                        f"({kind.get(spec.magic)}): is it one of the other three files, renamed? " + fix)
    ndim = raw[3]
    header_len = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if shape != spec.shape:
        raise DataError(f"{file} declares shape {shape}, expected {spec.shape}. " + fix)
    expected_len = header_len + int(np.prod(shape))
    if len(raw) != expected_len:
        raise DataError(f"{file} holds {len(raw)} decoded bytes, its header promises {expected_len}: "
                        "the file is truncated or has trailing data. " + fix)
    if verify:
        digest = hashlib.sha256(raw).hexdigest()
        if digest != spec.sha256:
            raise DataError(f"{file} decodes to the right size but the wrong content (SHA-256 {digest[:16]}..., "
                            f"expected {spec.sha256[:16]}...): it is corrupt or not Fashion-MNIST. " + fix)
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape)


def load_data(path: str | os.PathLike | None = None, verify: bool = True):
    """Fashion-MNIST as `((x_train, y_train), (x_test, y_test))`, like Keras's `load_data()`.

    Shapes and dtypes: uint8 (60000, 28, 28), uint8 (60000,), uint8 (10000, 28, 28), uint8 (10000,).
    Never downloads. Raises `DataError` with a fix when a file is missing or damaged.
    """
    d = find_data_dir(path)
    arrays = {key: read_idx(d / spec.name, spec, verify) for key, spec in FILES.items()}
    return ((arrays["train_images"], arrays["train_labels"]),
            (arrays["test_images"], arrays["test_labels"]))


# --------------------------------------------------------------------------- preprocessing & split

def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 28, 28, 1) in [0, 1]: x / 255 with IEEE division, in NumPy."""
    return (images.astype(np.float32) / np.float32(255.0))[..., None]


def train_validation_split(x: np.ndarray, y: np.ndarray, val_size: int = 5000, seed: int = 0):
    """A seeded random split of the *training* set: ((x_train, y_train), (x_val, y_val)).

    The validation set is never the test set; the test set is only used by `evaluate` at the end.
    """
    if not 0 <= val_size < len(x):
        raise ValueError(f"val_size must be in [0, {len(x)}), got {val_size}")
    order = np.random.default_rng(seed).permutation(len(x))
    val, train = order[:val_size], order[val_size:]
    return (x[train], y[train]), (x[val], y[val])


@dataclasses.dataclass(frozen=True)
class Splits:
    """Preprocessed arrays every implementation trains on: float32 NHWC images, int32 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_splits(val_size: int = 5000, split_seed: int = 0, train_limit: int | None = None,
                test_limit: int | None = None, path=None) -> Splits:
    """Load, split, and preprocess once.

    `train_limit` keeps the first examples of the training split; `test_limit` the first of both the
    validation and the test sets (small, fast evaluations for tests).
    """
    (x_train, y_train), (x_test, y_test) = load_data(path)
    (x_train, y_train), (x_val, y_val) = train_validation_split(x_train, y_train, val_size, split_seed)
    if train_limit is not None:
        x_train, y_train = x_train[:train_limit], y_train[:train_limit]
    if test_limit is not None:
        x_test, y_test = x_test[:test_limit], y_test[:test_limit]
        x_val, y_val = x_val[:test_limit], y_val[:test_limit]
    as_labels = lambda y: y.astype(np.int32)  # noqa: E731
    return Splits(preprocess(x_train), as_labels(y_train), preprocess(x_val), as_labels(y_val),
                  preprocess(x_test), as_labels(y_test))


# --------------------------------------------------------------------------- Dataset / Dataloader

class Dataset:
    """Paired inputs and labels, indexable like the post's (`dataset[i:j] -> (X, y)`)."""

    def __init__(self, X, y):
        if len(X) != len(y):
            raise ValueError(f"X and y differ in length: {len(X)} vs {len(y)}")
        self.X, self.y = X, y

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i], self.y[i]


class Dataloader:
    """Mini-batches of a `Dataset`, in an order defined here once for all implementations.

    `len(loader)` is the number of batches one epoch yields: ceil(n / batchsize), or floor(...) with
    `drop_last=True` (the post used floor while yielding the partial batch too). Each iteration is
    one epoch; with `shuffle=True`, epoch e uses `epoch_order(e)`, so iterating twice gives two
    different, reproducible orders.
    """

    def __init__(self, dataset: Dataset, batchsize: int = 32, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0):
        if batchsize < 1:
            raise ValueError(f"batchsize must be at least 1, got {batchsize}")
        self.dataset, self.batchsize = dataset, batchsize
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.epoch = 0  # the epoch the next `iter()` will yield

    def __len__(self) -> int:
        n, b = len(self.dataset), self.batchsize
        return n // b if self.drop_last else -(-n // b)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The example indices of epoch `epoch` (0-based), in visiting order."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def batch_indices(self, epoch: int) -> list[np.ndarray]:
        """`epoch_order(epoch)` cut into batches (the partial last batch kept unless `drop_last`)."""
        order = self.epoch_order(epoch)
        return [order[i:i + self.batchsize] for i in range(0, len(self) * self.batchsize, self.batchsize)]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        if not self.shuffle:  # contiguous slices: no copy, as in the post
            for i in range(len(self)):
                yield self.dataset[i * self.batchsize:(i + 1) * self.batchsize]
            return
        for idx in self.batch_indices(epoch):
            yield self.dataset[idx]
