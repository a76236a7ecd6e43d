"""`fmnist compare` and `fmnist train` end to end, on a small subset of the real data."""

import itertools
import json
import subprocess
import sys

import pytest

from fmnist.app.compare import compare
from fmnist.config import IMPLEMENTATIONS, TrainConfig
from fmnist.data import load_splits


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    config = TrainConfig(model="mlp", epochs=2, batch_size=32, train_limit=2000, val_size=1000)
    splits = load_splits(config.val_size, config.split_seed, config.train_limit, test_limit=1000)
    return compare(config, splits, out), out


def test_report_files_and_schema(report):
    report, out = report
    on_disk = json.loads((out / "report.json").read_text())
    assert set(on_disk) >= {"config", "differences", *IMPLEMENTATIONS}
    for impl in IMPLEMENTATIONS:
        run = on_disk[impl]
        assert [r["epoch"] for r in run["epochs"]] == [1, 2]
        assert set(run) >= {"epochs", "test_loss", "test_accuracy", "seconds_per_epoch"}
    assert set(on_disk["differences"]) == {f"{a}-{b}" for a, b in itertools.combinations(IMPLEMENTATIONS, 2)}
    table = (out / "report.md").read_text()
    assert "| 2 | val_accuracy |" in table and "| test | accuracy |" in table
    assert (out / "curves.png").stat().st_size > 10_000


def test_all_agree_over_two_short_epochs(report):
    report, _ = report
    for pair, diff in report["differences"].items():
        # 2 x 63 steps from the same weights and batches: the epoch-mean losses agree to
        # float32 accumulation (measured <= 6e-7 on the full set for 2 epochs, see
        # docs/parity-semantics.md section 5); 1e-5 leaves room for 1-ulp step differences to grow.
        assert diff["loss"] < 1e-5, pair
        assert diff["val_loss"] < 1e-5, pair
    # The three JAX implementations run the same XLA computations: measured identical.
    assert report["differences"]["handrolled-flax"]["loss"] == report["differences"]["flax-nnx"]["loss"] == 0.0


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_train_command_writes_the_run(impl, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fmnist.app", "train", "--impl", impl, "--epochs", "1", "--train-limit", "1000",
         "--val-size", "500", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["impl"] == impl and len(history["epochs"]) == 1
    assert set(history["epochs"][0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"}
    assert history["test_accuracy"] > 0.5  # 1000 images, 1 epoch: measured 0.6386 for all three; chance 0.1
    assert (tmp_path / "weights.npz").exists() and (tmp_path / "curves.png").exists()
    assert ("keras" in history["versions"]) == impl.startswith("keras")
    assert "Test accuracy" in result.stdout


def test_jax_runs_never_import_tensorflow():
    code = ("import sys; from fmnist import config; from fmnist.app import runner; "
            "runner.run('flax', config.TrainConfig(epochs=1, train_limit=200, val_size=100), callbacks=[]); "
            "runner.run('handrolled', config.TrainConfig(epochs=1, train_limit=200, val_size=100), callbacks=[]); "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["False", "False"]


# --- `fmnist compare --seeds K`: the seed-to-seed spread (JAX implementations only: no TensorFlow) ---

SEEDS_CONFIG = TrainConfig(model="mlp", epochs=1, batch_size=32, train_limit=500, val_size=300)


@pytest.fixture(scope="module")
def seeds_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare-seeds")
    splits = load_splits(SEEDS_CONFIG.val_size, SEEDS_CONFIG.split_seed, SEEDS_CONFIG.train_limit, test_limit=500)
    return compare(SEEDS_CONFIG, splits, out, impls=("handrolled", "flax"), seeds=2), out, splits


def test_the_seed_spread_is_max_minus_min_over_the_seed_runs(seeds_report):
    report, out, _ = seeds_report
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["seeds"] == [0, 1]
    for impl in ("handrolled", "flax"):
        runs = on_disk["seed_runs"][impl]
        assert len(runs) == 2 and runs[0] == on_disk[impl]  # seed 0 is today's report entry
        assert runs[0]["epochs"][0]["loss"] != runs[1]["epochs"][0]["loss"]  # another seed, another run
        spread = on_disk["seed_spread"][impl]
        for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):
            values = [run["epochs"][0][metric] for run in runs]
            assert spread[metric] == [pytest.approx(max(values) - min(values), abs=1e-12)]
        for metric in ("test_loss", "test_accuracy"):
            assert spread[metric] == pytest.approx(abs(runs[0][metric] - runs[1][metric]), abs=1e-12)
    # Flax trains bit-identically to the hand-rolled run, from either seed: identical, hence inside.
    verdict = on_disk["seed_verdict"]
    assert verdict["reference"] == "handrolled" and list(verdict["implementations"]) == ["flax"]
    assert all(v["inside"] and v["max_diff"] <= 1e-7 for v in verdict["implementations"]["flax"].values())


def test_the_second_seed_is_a_run_with_config_seed_plus_one(seeds_report):
    import dataclasses

    from fmnist.app import runner

    report, _, splits = seeds_report
    seed_1 = runner.run("handrolled", dataclasses.replace(SEEDS_CONFIG, seed=1), splits, callbacks=[])
    assert report["seed_runs"]["handrolled"][1]["epochs"][0]["loss"] == seed_1.epochs[0]["loss"]
    assert report["seed_runs"]["handrolled"][1]["test_loss"] == seed_1.test_loss


def test_the_seed_picture_and_markdown_are_written(seeds_report, tmp_path):
    report, out, _ = seeds_report
    assert (out / "curves.png").stat().st_size > 10_000
    text = (out / "report.md").read_text()
    assert "## Seeds 0..1" in text and "Seed-to-seed spread" in text
    assert "- flax vs handrolled: loss, accuracy, " in text  # bit-identical training
    # The band is drawn only from a report with several seeds: without it, the picture of today.
    from fmnist.app.plots import plot_comparison

    one = {k: v for k, v in report.items() if not k.startswith("seed")}
    assert plot_comparison(one, tmp_path / "one.png").stat().st_size > 10_000


def test_one_seed_gives_todays_report(tmp_path):
    config = TrainConfig(model="mlp", epochs=1, train_limit=300, val_size=100)
    splits = load_splits(config.val_size, config.split_seed, config.train_limit, test_limit=300)
    default = compare(config, splits, tmp_path / "default", impls=("handrolled",))
    explicit = compare(config, splits, tmp_path / "explicit", impls=("handrolled",), seeds=1)
    assert set(default) == set(explicit) == {"config", "versions", "handrolled", "differences"}
    for report in (default, explicit):
        report["handrolled"].pop("seconds_per_epoch")
        for row in report["handrolled"]["epochs"]:
            row.pop("seconds")
    assert default == explicit
    assert "Seed" not in (tmp_path / "explicit" / "report.md").read_text()


def test_the_verdict_compares_epoch_by_epoch_on_a_synthetic_case():
    from fmnist.app.seeds import compare_to_spread, verdict_line, within_spread

    inside = within_spread([1e-3, 2e-3], [4e-3, 3e-3])
    assert inside["inside"] and inside["epochs_outside"] == [] and inside["max_diff"] == 2e-3
    assert (inside["tightest_epoch"], inside["diff_at_tightest"], inside["spread_at_tightest"]) == (2, 2e-3, 3e-3)
    # Smaller than the largest spread, but not than the spread at its own epoch: outside.
    outside = within_spread([1e-3, 2e-3], [4e-3, 1e-3])
    assert not outside["inside"] and outside["epochs_outside"] == [2]
    assert within_spread([0.0], [0.0])["inside"] and not within_spread([1e-9], [0.0])["inside"]
    assert within_spread(5e-3, 5e-3)["inside"]  # equal is inside (accuracies come in steps)
    assert not within_spread([float("nan")], [1.0])["inside"]
    assert "OUTSIDE the seed spread at 1 of 2 epochs (worst: epoch 2, 2.0e-03 vs 1.0e-03)" in \
        verdict_line("keras", "handrolled", "val_loss", outside)
    assert verdict_line("keras", "handrolled", "test_loss", within_spread(1.2e-3, 4.5e-3)) == \
        "keras vs handrolled: max |Δ test_loss| 1.2e-03, inside the seed spread (4.5e-03)"

    def run(*val_losses, test=0.5):
        return {"epochs": [{"val_loss": v} for v in val_losses], "test_loss": test, "test_accuracy": 0.8}

    # The difference is taken at the same seed (largest over the seeds), the spread is the reference's.
    # Epoch 1: |Δ| 0.02 (seed 0) within the spread 0.1; epoch 2: |Δ| 0.15 (seed 1) past the spread 0.1.
    seed_runs = {"handrolled": [run(1.0, 0.5), run(1.1, 0.6)], "keras": [run(1.02, 0.5), run(1.1, 0.75)]}
    v = compare_to_spread(seed_runs, "handrolled")["keras"]
    assert v["val_loss"]["max_diff"] == pytest.approx(0.15)
    assert v["val_loss"]["epochs_outside"] == [2] and v["val_loss"]["tightest_epoch"] == 2
    assert v["val_loss"]["spread_at_tightest"] == pytest.approx(0.1)
    assert v["test_accuracy"]["max_diff"] == 0 and v["test_accuracy"]["inside"]


@pytest.mark.parametrize("value, message", [("0", "must be a positive integer, got 0"),
                                            ("-2", "must be a positive integer, got -2"),
                                            ("two", "invalid positive_int value: 'two'"),
                                            ("1.5", "invalid positive_int value: '1.5'")])
def test_bad_seeds_are_refused(value, message, capsys):
    from fmnist.app import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["compare", "--seeds", value])
    assert e.value.code == 2
    assert f"argument --seeds: {message}" in capsys.readouterr().err


def test_seeds_past_the_seed_range_are_refused_before_training(tmp_path, capsys):
    from fmnist.app import cli

    assert cli.main(["compare", "--impls", "handrolled", "--seed", str(2**32 - 1), "--seeds", "2",
                     "--train-limit", "100", "--val-size", "50", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fmnist compare: error: --seed 4294967295 with --seeds 2") and err.count("\n") == 1
