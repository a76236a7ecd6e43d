"""The command line: bad input ends with a one-line reason and a non-zero exit, never a traceback."""

import subprocess
import sys

import pytest

from fmnist.app import cli


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fmnist.app", *args], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["train", "--impl", "pytorch"], "invalid choice: 'pytorch'"),
    (["train", "--epochs", "0"], "must be a positive integer"),
    (["train", "--lr", "-1"], "must be a positive finite number"),
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


def test_unusable_output_directory_fails_before_training(tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    assert cli.main(["train", "--out", str(tmp_path / "a-file" / "sub")]) == 2
    assert "cannot use" in capsys.readouterr().err


def test_keras_with_the_paper_convention_is_refused_before_any_training(capsys):
    assert cli.main(["compare", "--adam-convention", "paper", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "epsilon-hat ('keras') convention" in err and err.count("\n") == 1


def test_missing_tensorflow_is_a_one_line_reason():
    code = ("import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None\n"
            "from fmnist.app import cli; raise SystemExit(cli.main(['train', '--impl', 'keras']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--impl keras needs keras" in result.stderr and "pip install" in result.stderr


def test_compare_of_one_implementation_writes_its_report(tmp_path):
    assert cli.main(["compare", "--impls", "handrolled", "handrolled", "--epochs", "1", "--train-limit", "300",
                     "--val-size", "100", "--out", str(tmp_path)]) == 0
    assert "| test | accuracy |" in (tmp_path / "report.md").read_text()
    assert "pairwise" not in (tmp_path / "report.md").read_text()
