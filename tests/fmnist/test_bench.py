"""`fmnist bench`: the shape of its JSON output, from a run with tiny step counts (no timing asserted)."""

import json

import pytest

from fmnist.app import bench, bounds


@pytest.fixture(scope="module")
def small_splits(real_splits):
    return real_splits(val_size=500, train_limit=3000, test_limit=500)


def test_bench_json_schema(small_splits, capsys):
    pytest.importorskip("tensorflow")
    assert bench.main_bench(["mlp", "cnn"], list(bench.IMPLS), repeats=2, steps={"mlp": 3, "cnn": 2},
                            as_json=True, splits=small_splits) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"mlp", "cnn", "ratios", "ratio_ranges", "machine", "peak_gflops"}
    assert out["peak_gflops"] > 0
    names = {"handrolled", "flax", "nnx", "keras", "bound", "flop_bound", "peak_gflops"}
    for model in ("mlp", "cnn"):
        r = out[model]
        assert set(r) == names | {"samples", "batch_size", "steps_timed", "steps_per_epoch", "epoch_tflop"}
        assert r["epoch_tflop"] == pytest.approx(bounds.flops_per_image(model) * len(small_splits.x_train) / 1e12)
        assert r["batch_size"] == bench.DEFAULT_SETUPS[model][0]
        assert r["steps_timed"] == {"mlp": 3, "cnn": 2}[model]
        assert r["steps_per_epoch"] == -(-len(small_splits.x_train) // r["batch_size"])
        assert set(r["samples"]) == names
        for name in names:
            assert len(r["samples"][name]) == 2 and all(t > 0 for t in r["samples"][name])
            assert r[name] > 0
    assert set(out["ratios"]["mlp"]) == {"keras/handrolled", "keras/flax", "keras/nnx", "handrolled/bound",
                                         "flax/bound", "nnx/bound", "handrolled/flop_bound", "flax/flop_bound",
                                         "nnx/flop_bound"}
    assert set(out["ratios"]["cnn"]) == {"keras/handrolled", "keras/flax", "keras/nnx", "handrolled/bound",
                                         "flax/bound", "nnx/bound"}
    assert out["cnn"]["samples"]["bound"] == out["cnn"]["samples"]["flop_bound"]
    for model in ("mlp", "cnn"):
        assert set(out["ratio_ranges"][model]) == set(out["ratios"][model])
        for low, high in out["ratio_ranges"][model].values():
            assert 0 < low <= high
    assert out["machine"]["cpus"] >= 1 and isinstance(out["machine"]["jax_backend"], str)


def test_ratio_ranges_pair_the_implementations_within_each_round():
    results = {"cnn": {"handrolled": 2.0, "keras": 3.0, "batch_size": 128,
                       "samples": {"handrolled": [2.0, 1.0, 4.0], "keras": [3.0, 3.0, 4.0]}}}
    # per round 1.5, 3.0, 1.0; the ratio of the medians (3.0 / 2.0) is a different number
    assert bench.ratio_ranges(results) == {"cnn": {"keras/handrolled": [1.0, 3.0]}}
    assert "keras/handrolled 1.50x (1.00-3.00)" in bench.table(results)


def test_bench_table_lists_every_model(small_splits):
    results = bench.bench(["mlp"], ["handrolled"], repeats=1, steps={"mlp": 2}, splits=small_splits, log=None)
    text = bench.table(results)
    assert text.splitlines()[2].startswith("| mlp | 32 |")
    assert "handrolled/bound" in text


def test_the_command_line_offers_what_bench_can_time():
    from fmnist.app import bench, flags

    assert flags.BENCH_IMPLS == bench.IMPLS


def test_flop_counts_follow_the_layer_shapes():
    """Forward multiply-adds per image, written out: conv_0 28*28*9*1*32, conv_1 14*14*9*32*64,
    dense_0 3136*128, dense_1 128*10 (4.24 M for the CNN); the backward adds every kernel gradient
    and every input gradient but the first layer's."""
    assert bounds.forward_macs("cnn") == {"conv_0": 225_792, "conv_1": 3_612_672, "dense_0": 401_408,
                                          "dense_1": 1_280}
    assert bounds.flops_per_image("cnn") == 2 * (3 * 4_241_152 - 225_792)
    assert bounds.flops_per_image("mlp") == 2 * (3 * (784 * 128 + 128 * 10) - 784 * 128)
    # One 55,000-image CNN epoch: 1.37 TFLOP, the figure the issue worked out by hand.
    assert bounds.flops_per_image("cnn") * 55_000 / 1e12 == pytest.approx(1.375, abs=1e-3)
