"""The data module: the real files, and every way a file can be missing or damaged."""

import gzip
import shutil

import numpy as np
import pytest

from fmnist import data
from fmnist.data import FILES, DataError, Dataloader, Dataset


@pytest.fixture(scope="module")
def real():
    return data.load_data()


def test_real_files_load_like_keras(real):
    (x_train, y_train), (x_test, y_test) = real
    assert x_train.shape == (60000, 28, 28) and x_train.dtype == np.uint8
    assert y_train.shape == (60000,) and y_train.dtype == np.uint8
    assert x_test.shape == (10000, 28, 28) and y_test.shape == (10000,)
    # Fashion-MNIST is balanced: 6000 training and 1000 test images per class.
    assert np.all(np.bincount(y_train) == 6000) and np.all(np.bincount(y_test) == 1000)
    assert len(data.CLASS_NAMES) == 10


def write_idx(path, array, magic=None):
    """Write `array` (uint8) as a gzipped IDX file, optionally with a wrong magic number."""
    magic = magic if magic is not None else (0x0800 | array.ndim)
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def data_dir(tmp_path):
    """A copy of the real files in a temporary directory, to damage."""
    for spec in FILES.values():
        shutil.copy(data.DEBIAN_DIR / spec.name, tmp_path / spec.name)
    return tmp_path


def test_copy_loads_and_is_verified(data_dir, real):
    (x_train, _), (_, y_test) = data.load_data(data_dir)
    np.testing.assert_array_equal(x_train, real[0][0])
    np.testing.assert_array_equal(y_test, real[1][1])


def test_missing_file_names_it_and_says_how_to_fix(data_dir):
    (data_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz is missing.*apt-get install"):
        data.load_data(data_dir)


def test_empty_explicit_dir_is_an_error_not_a_fallback(tmp_path):
    with pytest.raises(DataError, match="No Fashion-MNIST files in"):
        data.load_data(tmp_path)


def test_nothing_anywhere(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "nowhere")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    with pytest.raises(DataError, match="not found.*dataset-fashion-mnist"):
        data.load_data()


def test_environment_variable_is_searched_first(data_dir, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(data_dir))
    assert data.find_data_dir() == data_dir


def test_truncated_gzip(data_dir):
    f = data_dir / "train-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz is not a readable gzip.*truncated"):
        data.load_data(data_dir)


def test_not_gzip_at_all(data_dir):
    (data_dir / "t10k-images-idx3-ubyte.gz").write_bytes(b"<html>404 not found</html>")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz is not a readable gzip"):
        data.load_data(data_dir)


def test_swapped_files_are_caught_by_type(data_dir):
    images, labels = data_dir / "t10k-images-idx3-ubyte.gz", data_dir / "t10k-labels-idx1-ubyte.gz"
    tmp = data_dir / "tmp"
    images.rename(tmp), labels.rename(images), tmp.rename(labels)
    with pytest.raises(DataError, match="holds IDX type 0x0801, expected 0x0803.*renamed"):
        data.load_data(data_dir)


def test_train_and_test_mixed_up_is_caught_by_shape(data_dir):
    shutil.copy(data_dir / "t10k-labels-idx1-ubyte.gz", data_dir / "train-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match=r"declares shape \(10000,\), expected \(60000,\)"):
        data.load_data(data_dir)


def test_short_payload(data_dir):
    f = data_dir / "train-labels-idx1-ubyte.gz"
    raw = gzip.decompress(f.read_bytes())
    f.write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(DataError, match="holds 59998 decoded bytes, its header promises 60008"):
        data.load_data(data_dir)


def test_one_flipped_label_fails_the_checksum(data_dir):
    f = data_dir / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(f.read_bytes()))
    raw[100] = (raw[100] + 1) % 10
    f.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="wrong content"):
        data.load_data(data_dir)


def test_not_an_idx_header(data_dir):
    with gzip.open(data_dir / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"PK\x03\x04 something else")
    with pytest.raises(DataError, match="does not start with an IDX header"):
        data.load_data(data_dir)


def test_generated_idx_roundtrip_without_checksum(tmp_path):
    """`read_idx` decodes any well-formed file; the digest check is what ties it to Fashion-MNIST."""
    array = np.random.default_rng(0).integers(0, 256, (60000,), dtype=np.uint8)
    write_idx(tmp_path / "labels.gz", array)
    out = data.read_idx(tmp_path / "labels.gz", FILES["train_labels"], verify=False)
    np.testing.assert_array_equal(out, array)
    with pytest.raises(DataError, match="wrong content"):
        data.read_idx(tmp_path / "labels.gz", FILES["train_labels"])


def test_preprocess_is_ieee_division():
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    out = data.preprocess(x)
    assert out.shape == (1, 16, 16, 1) and out.dtype == np.float32
    # Correctly rounded x/255 in float32 (from float64), not x * (1/255): they differ for many values.
    expected = (np.arange(256) / 255.0).astype(np.float32).reshape(1, 16, 16, 1)
    np.testing.assert_array_equal(out, expected)
    assert np.any(out != (x.astype(np.float32) * np.float32(1 / 255))[..., None])


def test_split_is_seeded_disjoint_and_complete():
    x, y = np.arange(100), np.arange(100) % 10
    (xt, yt), (xv, yv) = data.train_validation_split(x, y, val_size=20, seed=3)
    assert len(xv) == 20 and len(xt) == 80
    assert sorted(np.concatenate([xt, xv])) == list(range(100))
    (xt2, _), (xv2, _) = data.train_validation_split(x, y, val_size=20, seed=3)
    np.testing.assert_array_equal(xv, xv2)
    with pytest.raises(ValueError, match="val_size"):
        data.train_validation_split(x, y, val_size=100)


def test_dataloader_len_counts_the_batches_it_yields():
    ds = Dataset(np.arange(100), np.arange(100))
    for drop_last, expected in ((False, [32, 32, 32, 4]), (True, [32, 32, 32])):
        for shuffle in (False, True):
            loader = Dataloader(ds, batchsize=32, shuffle=shuffle, drop_last=drop_last)
            sizes = [len(xb) for xb, _ in loader]
            assert sizes == expected and len(loader) == len(expected)


def test_dataloader_order_is_seeded_per_epoch_and_a_permutation():
    ds = Dataset(np.arange(50), np.arange(50) * 10)
    loader = Dataloader(ds, batchsize=8, shuffle=True, seed=7)
    first = np.concatenate([xb for xb, _ in loader])
    second = np.concatenate([xb for xb, yb in loader])
    assert sorted(first) == list(range(50)) and not np.array_equal(first, second)
    np.testing.assert_array_equal(first, loader.epoch_order(0))
    np.testing.assert_array_equal(second, loader.epoch_order(1))
    again = Dataloader(ds, batchsize=8, shuffle=True, seed=7)
    np.testing.assert_array_equal(again.epoch_order(1), second)
    xb, yb = next(iter(Dataloader(ds, batchsize=8, shuffle=True, seed=7)))
    np.testing.assert_array_equal(yb, xb * 10)  # inputs and labels stay paired


def test_unshuffled_loader_is_in_order():
    ds = Dataset(np.arange(10), np.arange(10))
    assert [list(x) for x, _ in Dataloader(ds, batchsize=4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_bad_arguments():
    with pytest.raises(ValueError, match="differ in length"):
        Dataset(np.arange(3), np.arange(4))
    with pytest.raises(ValueError, match="batchsize"):
        Dataloader(Dataset(np.arange(3), np.arange(3)), batchsize=0)
