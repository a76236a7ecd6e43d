"""The command line: bad input ends with a one-line reason and a non-zero exit, never a traceback."""

import subprocess
import sys

import pytest

from fmnist import cli


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fmnist", *args], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["train", "--impl", "pytorch"], "invalid choice: 'pytorch'"),
    (["train", "--epochs", "0"], "must be a positive integer"),
    (["train", "--lr", "-1"], "must be a positive number"),
    (["train", "--batch-size", "many"], "invalid positive_int value"),
    (["compare", "--model", "resnet"], "invalid choice: 'resnet'"),
])
def test_bad_flags_exit_2_with_a_reason(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_impossible_values_are_one_line(capsys):
    assert cli.main(["train", "--momentum", "1.5", "--optimizer", "sgd"]) == 2
    err = capsys.readouterr().err
    assert err == "fmnist train: error: momentum must be in [0, 1), got 1.5\n"


def test_missing_data_says_what_to_do(tmp_path):
    result = run_cli("train", "--data-dir", str(tmp_path), "--epochs", "1")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("fmnist train: error: No Fashion-MNIST files in")
    assert "apt-get install" in result.stderr and result.stderr.count("\n") == 1


def test_data_command_verifies_the_real_files():
    result = run_cli("data")
    assert result.returncode == 0, result.stderr
    assert "checksums verified" in result.stdout


def test_help_explains_every_flag():
    text = run_cli("train", "--help").stdout
    for flag in ("--impl", "--model", "--epochs", "--batch-size", "--lr", "--optimizer", "--seed",
                 "--out", "--init", "--adam-convention"):
        assert flag in text
