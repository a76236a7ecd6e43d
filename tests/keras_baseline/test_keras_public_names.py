"""The Keras modules expose the names every implementation shares, in the shared order (read from
the source, so no Keras is imported): a reader can diff `keras_baseline` against the JAX versions."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "keras_baseline"
SHARED = {
    "models.py": ["build_model", "from_weights", "to_weights"],
    # train_step has no free function in Keras (Keras's step is Model.train_step, run inside fit):
    # a comment line stands where it would be.
    "train.py": ["check", "make_optimizer", "loss_and_grads", "train_step", "evaluate", "train_and_evaluate"],
}


def public_names_in_order(path: Path) -> list[str]:
    """Top-level function and class names, with a `# train_step:` comment line counted as `train_step`."""
    source = path.read_text()
    found = [(node.lineno, node.name) for node in ast.parse(source).body
             if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
    found += [(i, "train_step") for i, line in enumerate(source.splitlines(), start=1)
              if line.startswith("# train_step:")]
    return [name for _, name in sorted(found)]


@pytest.mark.parametrize("module", list(SHARED))
def test_shared_names_come_in_the_shared_order(module):
    names = public_names_in_order(PACKAGE / module)
    shared = SHARED[module]
    assert [n for n in names if n in shared] == shared


def test_the_keras_jax_train_module_has_check_and_train_and_evaluate():
    names = public_names_in_order(PACKAGE / "jax_backend.py")
    assert [n for n in names if n in ("check", "train_and_evaluate")] == ["check", "train_and_evaluate"]


def test_the_old_weight_functions_are_gone():
    """`set_weights(model, weights)` / `get_weights(model)` became `from_weights` / `to_weights`."""
    names = public_names_in_order(PACKAGE / "models.py")
    assert "set_weights" not in names and "get_weights" not in names
