"""`fmnist evaluate`: a run's weights on the real test set, in every implementation, and its pictures.

The runs here are tiny (1 epoch on 1,000 training images, from the canonical He-normal weights) but
real, and they are evaluated on all 10,000 real test images.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from fmnist.app import cli, evaluate, runner
from fmnist.config import TrainConfig
from fmnist.data import CLASS_NAMES
from fmnist.app.rundir import save_run
from fmnist.weights import init_weights, load_weights, save_weights

INSTALLED = runner.installed_impls()


def needs(*impls):
    missing = [i for i in impls if i not in INSTALLED]
    return pytest.mark.skipif(bool(missing), reason=f"not installed: {', '.join(missing)}")


@pytest.fixture(scope="module")
def splits(real_splits):
    return real_splits(val_size=100, train_limit=1000)


@pytest.fixture(scope="module")
def test_set(splits):
    return splits.x_test, splits.y_test


def tiny_run(splits, out, impl: str, model: str):
    """A run directory as `fmnist train --impl IMPL --model MODEL --epochs 1 --train-limit 1000` writes it."""
    config = TrainConfig(model=model, epochs=1, train_limit=1000, val_size=100)
    save_run(runner.run(impl, config, splits, callbacks=[]), out, plot=False)
    return out


@pytest.fixture(scope="module")
def mlp_run(splits, tmp_path_factory):
    return tiny_run(splits, tmp_path_factory.mktemp("flax-mlp"), "flax", "mlp")


@pytest.fixture(scope="module")
def cnn_run(splits, tmp_path_factory):
    return tiny_run(splits, tmp_path_factory.mktemp("handrolled-cnn"), "handrolled", "cnn")


# --------------------------------------------------------------------------- metrics

def test_confusion_matrix_matches_a_numpy_count():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 10, 5000), rng.integers(0, 10, 5000)
    expected = np.zeros((10, 10), int)
    np.add.at(expected, (y_true, y_pred), 1)
    m = evaluate.confusion_matrix(y_true, y_pred)
    np.testing.assert_array_equal(m, expected)
    assert m.sum() == 5000 and np.trace(m) == np.sum(y_true == y_pred)
    np.testing.assert_array_equal(m.sum(axis=1), np.bincount(y_true, minlength=10))  # rows: true class
    assert evaluate.confusion_matrix([3], [7])[3, 7] == 1
    with pytest.raises(ValueError, match="outside"):
        evaluate.confusion_matrix([0, 10], [0, 1])
    with pytest.raises(ValueError, match="differ in length"):
        evaluate.confusion_matrix([0, 1], [0])


def test_cross_entropy_and_softmax_are_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(evaluate.softmax(logits).sum(axis=1), 1.0)
    assert evaluate.cross_entropy(logits, np.array([0, 1])) == pytest.approx(np.log(3) / 2)


# --------------------------------------------------------------------------- evaluating a run

def test_evaluate_run_writes_the_report_and_the_pictures(mlp_run, test_set, tmp_path):
    x, y = test_set
    report = evaluate.evaluate_run(mlp_run, out_dir=tmp_path, test_set=test_set)
    assert report["impl"] == "flax" and report["model"] == "mlp"  # the trainer, from history.json
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["weights"] == str(mlp_run / "weights.npz") and saved["test_examples"] == 10000

    predicted = np.argmax(evaluate.predict_logits("flax", "mlp", load_weights(mlp_run / "weights.npz"), x), axis=-1)
    m = np.array(saved["confusion_matrix"])
    assert m.shape == (10, 10) and m.sum() == len(y) == 10000
    expected = np.zeros((10, 10), int)
    np.add.at(expected, (y, predicted), 1)
    np.testing.assert_array_equal(m, expected)
    np.testing.assert_array_equal(m.sum(axis=1), np.bincount(y, minlength=10))  # 1000 per class
    assert saved["test_accuracy"] == np.trace(m) / 10000
    # The same weights and test set as training's final evaluation: float64 here, float32 sums on
    # the device there (measured: 2.7e-8 apart for a 5-epoch MLP).
    history = json.loads((mlp_run / "history.json").read_text())
    assert saved["test_loss"] == pytest.approx(history["test_loss"], rel=1e-5)
    assert saved["test_accuracy"] == history["test_accuracy"]

    for name in ("confusion_matrix.png", "predictions.png"):
        assert_picture(tmp_path / name)
    # Mistakes are framed and titled in red: the grid holds 16 of them, so red pixels must be there.
    rgb = load_rgb(tmp_path / "predictions.png")
    red = (rgb[..., 0] > 0.7) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)
    assert red.sum() > 1000


def load_rgb(path):
    import matplotlib.image

    return matplotlib.image.imread(path)[..., :3]


def assert_picture(path):
    """A PNG of real size with real content: not blank, many distinct colours."""
    rgb = load_rgb(path)
    assert rgb.shape[0] > 400 and rgb.shape[1] > 600, rgb.shape
    assert rgb.std() > 0.1
    assert len(np.unique((rgb * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50


def test_confident_mistakes_come_first_then_a_fixed_sample(mlp_run, test_set):
    from fmnist.app import evaluation_plots

    x, y = test_set
    p = evaluate.softmax(evaluate.predict_logits("handrolled", "mlp", load_weights(mlp_run / "weights.npz"), x))
    mistakes, sample = evaluation_plots.choose_examples(y, p)
    assert len(mistakes) == 16 and len(sample) == 16 and not set(mistakes) & set(sample)
    predicted = p.argmax(axis=1)
    assert np.all(predicted[mistakes] != y[mistakes])
    confidence = p[mistakes, predicted[mistakes]]
    assert np.all(np.diff(confidence) <= 0)
    wrong = predicted != y  # no mistake left out is more confident than the least confident shown
    assert p[wrong].max(axis=1).max() == confidence[0] and np.sum(p[wrong].max(axis=1) > confidence[-1]) < 16
    again, sample_again = evaluation_plots.choose_examples(y, p)
    np.testing.assert_array_equal(sample, sample_again)
    assert evaluation_plots.percent(0.9996) == "99.96%" and evaluation_plots.percent(0.42) == "42%"


def test_weights_trained_by_one_implementation_evaluate_the_same_in_another(mlp_run, test_set, tmp_path):
    by_flax = evaluate.evaluate_run(mlp_run, "flax", tmp_path / "flax", compare_impls=[], test_set=test_set,
                                    plots=False)
    by_handrolled = evaluate.evaluate_run(mlp_run, "handrolled", tmp_path / "h", compare_impls=[],
                                          test_set=test_set, plots=False)
    assert by_flax["confusion_matrix"] == by_handrolled["confusion_matrix"]
    assert by_handrolled["trained_by"] == "flax" and by_handrolled["disagreements"] == {}


@needs("handrolled", "flax", "nnx")
def test_the_jax_implementations_predict_identically_by_default(mlp_run, cnn_run, test_set, tmp_path):
    mlp = evaluate.evaluate_run(mlp_run, out_dir=tmp_path / "mlp", test_set=test_set, plots=False)
    assert mlp["compared_impls"] == ["flax", "handrolled", "nnx"]
    # MLP: the three compute the same products in the same order, so the logits are bit-identical
    # (measured: 0.0 for every pair, on this run and on a 5-epoch one, jax 0.10.2 and 0.12).
    assert mlp["disagreements"] == {"handrolled-flax": 0, "handrolled-nnx": 0, "flax-nnx": 0}
    assert set(mlp["max_abs_logit_difference"].values()) == {0.0}

    cnn = evaluate.evaluate_run(cnn_run, out_dir=tmp_path / "cnn", test_set=test_set, plots=False)
    assert cnn["impl"] == "handrolled"
    # CNN: Flax and NNX share their layers (identical logits); the hand-rolled convolutions round
    # differently. Measured: at most 2.4e-6 on this 1-epoch run, 3.8e-6 on a 3-epoch one (logits
    # up to ~30). A prediction can only flip for an image whose top two logits are within twice
    # that (`near_ties`): measured 0 of 10,000 differ, and the closest top two are 4.6e-5 apart
    # here (1.3e-3 after 3 epochs), 10 times what rounding moves them; 2e-5 bounds the difference
    # with room for other kernels.
    assert cnn["disagreements"] == {"handrolled-flax": 0, "handrolled-nnx": 0, "flax-nnx": 0}
    assert cnn["max_abs_logit_difference"]["flax-nnx"] == 0.0
    assert max(cnn["max_abs_logit_difference"].values()) < 2e-5
    assert cnn["near_ties"] == 0


@needs("handrolled", "flax", "nnx", "keras", "keras-jax")
def test_every_implementation_predicts_the_same_classes(cnn_run, test_set, tmp_path):
    x, y = test_set
    # The first 2,000 test images: Keras's eager CNN and the keras-jax child are the slow part of
    # this file; the figures below are from all 10,000 (`fmnist evaluate RUN --compare-impls`).
    report = evaluate.evaluate_run(cnn_run, "keras", tmp_path, compare_impls=INSTALLED, test_set=(x[:2000], y[:2000]),
                                   plots=False)
    assert report["test_examples"] == 2000 and np.sum(report["confusion_matrix"]) == 2000
    assert report["compared_impls"] == ["keras", "handrolled", "flax", "nnx", "keras-jax"]
    # Measured here: largest |logit difference| 4.3e-6 (Flax vs Keras on TensorFlow), closest top
    # two logits 8.5e-4 apart, so nothing can flip. On all 10,000 images of trained runs: 0
    # predictions differ in any of the 10 pairs, largest differences 7.6e-6 to 9.5e-6 (3-epoch
    # CNNs) and 1.1e-5 (5-epoch MLP: Keras on TensorFlow vs the rest; keras-jax is bit-identical to
    # the JAX ones there). 1e-4 leaves room for other kernels; a flip would need a near tie.
    assert len(report["disagreements"]) == 10 and set(report["disagreements"].values()) == {0}
    assert max(report["max_abs_logit_difference"].values()) < 1e-4
    assert report["near_ties"] == 0


@needs("handrolled", "flax", "nnx")
def test_the_default_comparison_needs_no_tensorflow(tmp_path):
    save_weights(tmp_path / "weights.npz", init_weights("mlp"))
    code = ("import sys; sys.modules['tensorflow'] = None\n"  # any import of TensorFlow now fails
            "from fmnist.app import cli; raise SystemExit(cli.main(['evaluate', sys.argv[1]]))")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "handrolled-flax 0, handrolled-nnx 0, flax-nnx 0" in result.stdout


def test_predict_logits_checks_the_implementation_and_the_weights():
    w = init_weights("mlp")
    with pytest.raises(ValueError, match="unknown implementation"):
        evaluate.predict_logits("pytorch", "mlp", w, np.zeros((1, 28, 28, 1), np.float32))
    with pytest.raises(ValueError, match="layers"):
        evaluate.predict_logits("handrolled", "cnn", w, np.zeros((1, 28, 28, 1), np.float32))
    # A partial last batch is padded and cut off again: 3 images give 3 rows.
    assert evaluate.predict_logits("handrolled", "mlp", w, np.zeros((3, 28, 28, 1), np.float32)).shape == (3, 10)


# --------------------------------------------------------------------------- the command line

def test_the_command_prints_loss_accuracy_and_agreement(mlp_run, tmp_path, capsys):
    assert cli.main(["evaluate", str(mlp_run), "--impl", "handrolled", "--out", str(tmp_path),
                     "--compare-impls", "flax"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("handrolled mlp on 10000 test images: test_loss: ")
    assert out[1].startswith("Predictions that differ (of 10000): handrolled-flax 0;")
    assert out[2] == f"Wrote {tmp_path / 'evaluation.json'}, {tmp_path / 'confusion_matrix.png'}, " \
                     f"{tmp_path / 'predictions.png'}"
    assert json.loads((tmp_path / "evaluation.json").read_text())["classes"] == list(CLASS_NAMES)


def test_help_explains_the_comparison(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["evaluate", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in ("RUN_DIR", "--impl", "--out", "--data-dir", "--compare-impls", "--no-compare",
                  "(handrolled, flax, nnx;", "disagreements", "every installed one"):
        assert words in text, words


def one_line_error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("fmnist evaluate: error: ") and captured.err.count("\n") == 1, captured.err
    return captured.err


def test_a_missing_run_dir_is_one_line(tmp_path, capsys):
    assert "is not a run directory" in one_line_error(capsys, ["evaluate", str(tmp_path / "nope")])


def test_a_run_dir_without_weights_is_one_line(tmp_path, capsys):
    assert "weights.npz not found" in one_line_error(capsys, ["evaluate", str(tmp_path)])


@pytest.mark.parametrize("content", [b"not a zip file at all", b"PK\x03\x04" + b"\0" * 40, b""])
def test_a_corrupt_weights_file_is_one_line(tmp_path, capsys, content):
    (tmp_path / "weights.npz").write_bytes(content)
    assert "cannot read" in one_line_error(capsys, ["evaluate", str(tmp_path)])


def test_a_truncated_weights_file_is_one_line(tmp_path, capsys):
    save_weights(tmp_path / "full.npz", init_weights("cnn"))
    data = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "weights.npz").write_bytes(data[:len(data) // 2])
    assert "cannot read" in one_line_error(capsys, ["evaluate", str(tmp_path)])


@pytest.mark.parametrize("weights", [
    {"foo": {"kernel": np.zeros((784, 128), np.float32), "bias": np.zeros(128, np.float32)}},
    {"dense_0": {"kernel": np.zeros((100, 128), np.float32), "bias": np.zeros(128, np.float32)},
     "dense_1": {"kernel": np.zeros((128, 10), np.float32), "bias": np.zeros(10, np.float32)}},
])
def test_weights_matching_no_model_are_one_line(tmp_path, capsys, weights):
    save_weights(tmp_path / "weights.npz", weights)
    assert "matches no model" in one_line_error(capsys, ["evaluate", str(tmp_path)])


def test_a_history_of_another_model_is_one_line(tmp_path, capsys):
    save_weights(tmp_path / "weights.npz", init_weights("mlp"))
    (tmp_path / "history.json").write_text(json.dumps({"impl": "flax", "config": {"model": "cnn"}}))
    assert "says the run trained a cnn" in one_line_error(capsys, ["evaluate", str(tmp_path)])
    (tmp_path / "history.json").write_text("{not json")
    assert "cannot read" in one_line_error(capsys, ["evaluate", str(tmp_path)])


def test_an_implementation_not_installed_is_one_line(tmp_path, capsys, monkeypatch):
    save_weights(tmp_path / "weights.npz", init_weights("mlp"))
    monkeypatch.setattr(runner, "installed_impls", lambda: ["handrolled", "flax"])
    err = one_line_error(capsys, ["evaluate", str(tmp_path), "--impl", "keras"])
    assert "--impl keras: keras is not installed" in err and "pip install" in err
    err = one_line_error(capsys, ["evaluate", str(tmp_path), "--compare-impls", "nnx"])
    assert "--compare-impls nnx: nnx is not installed" in err


def test_an_unknown_implementation_is_refused_by_argparse(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["evaluate", str(tmp_path), "--impl", "pytorch"])
    assert e.value.code == 2 and "invalid choice: 'pytorch'" in capsys.readouterr().err


def test_missing_data_is_one_line(tmp_path, capsys):
    save_weights(tmp_path / "weights.npz", init_weights("mlp"))
    err = one_line_error(capsys, ["evaluate", str(tmp_path), "--data-dir", str(tmp_path / "empty"), "--no-compare"])
    assert "No Fashion-MNIST files" in err
