"""Canonical weights and the NumPy initialisers every implementation starts from."""

import numpy as np
import pytest

from fmnist import initializers, weights


@pytest.mark.parametrize("model", weights.MODEL_NAMES)
@pytest.mark.parametrize("init", sorted(initializers.INITIALIZERS))
def test_init_weights_has_the_canonical_layout(model, init):
    w = weights.init_weights(model, init, seed=1)
    weights.check_weights(model, w)
    assert weights.model_of(w) == model
    assert all(p["kernel"].dtype == np.float32 and not p["bias"].any() for p in w.values())


def test_same_seed_same_numbers_other_seed_other_numbers():
    a, b = weights.init_weights("cnn", seed=3), weights.init_weights("cnn", seed=3)
    assert weights.max_abs_diff(a, b) == 0.0
    assert weights.max_abs_diff(a, weights.init_weights("cnn", seed=4)) > 0.1


def test_save_and_load_are_bit_exact(tmp_path):
    w = weights.init_weights("cnn", "glorot_uniform", seed=0)
    back = weights.load_weights(weights.save_weights(tmp_path / "w.npz", w))
    assert list(back) == list(w)
    for layer in w:
        for k in ("kernel", "bias"):
            np.testing.assert_array_equal(back[layer][k], w[layer][k])


def test_fans_of_dense_and_conv():
    assert initializers.fans((784, 128)) == (784, 128)
    assert initializers.fans((3, 3, 32, 64)) == (288, 576)


@pytest.mark.parametrize("name, shape, std", [
    # Expected standard deviations: glorot U(+-l) has std l/sqrt(3); he N(0, 2/fan_in);
    # lecun truncated normal is corrected to std sqrt(1/fan_in).
    ("glorot_uniform", (784, 128), np.sqrt(6 / (784 + 128)) / np.sqrt(3)),
    ("he_normal", (784, 128), np.sqrt(2 / 784)),
    ("lecun_normal", (784, 128), np.sqrt(1 / 784)),
    ("lecun_normal", (3, 3, 32, 64), np.sqrt(1 / 288)),
])
def test_initialiser_statistics(name, shape, std):
    k = initializers.get(name)(np.random.default_rng(0), shape)
    assert k.shape == shape and k.dtype == np.float32
    # 100k draws: the sample std is within about 0.5% of the true one; 2% leaves room.
    assert abs(k.std() / std - 1) < 0.02
    assert abs(k.mean()) < 0.02 * std * 10


def test_truncation_bounds():
    k = initializers.lecun_normal(np.random.default_rng(0), (784, 128))
    bound = 2 * np.sqrt(1 / 784) / initializers.TRUNCATED_NORMAL_STD
    assert np.abs(k).max() <= bound
    g = initializers.glorot_uniform(np.random.default_rng(0), (784, 128))
    assert np.abs(g).max() <= np.sqrt(6 / 912)


def test_bad_names_and_shapes():
    with pytest.raises(ValueError, match="unknown initialiser 'zeros'; choose one of"):
        initializers.get("zeros")
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        weights.init_weights("resnet")
    w = weights.init_weights("mlp")
    w["dense_0"]["kernel"] = w["dense_0"]["kernel"].T
    with pytest.raises(ValueError, match="layer dense_0: expected kernel"):
        weights.check_weights("mlp", w)
    with pytest.raises(ValueError, match="must have layers"):
        weights.check_weights("cnn", w)
