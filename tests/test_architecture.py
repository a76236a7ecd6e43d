"""The layout as a contract: imports run one way, without cycles, and the implementations line up.

Layers, lowest first: the shared contract (`fmnist`), the fast path (`fmnist.fastpath`), the
implementations (`handrolled`, `flax_impl`, `nnx_impl`, `keras_baseline`), the application
(`fmnist.app`). A module may import its own layer or lower ones, never higher; implementations do
not import each other, but for one edge: NNX is Flax's second API and shares linen's Optax module.
Every import counts, including those inside functions (lazy imports).
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fmnist", "handrolled", "flax_impl", "nnx_impl", "keras_baseline")
IMPLEMENTATIONS = ("handrolled", "flax_impl", "nnx_impl", "keras_baseline")
ALLOWED_BETWEEN_IMPLEMENTATIONS = {("nnx_impl", "flax_impl.optimizers")}


def module_files() -> dict[str, Path]:
    """{dotted module name: file} for every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports_of(path: Path, name: str, modules) -> set[str]:
    """The project modules `path` imports anywhere in its body (`from p import m` counts m if a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a name inside a module
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def layer(module: str) -> int:
    if module == "fmnist.app" or module.startswith("fmnist.app."):
        return 3
    if module.split(".")[0] in IMPLEMENTATIONS:
        return 2
    if module == "fmnist.fastpath" or module.startswith("fmnist.fastpath."):
        return 1
    return 0


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_lazy_imports():
    """`fmnist.app.predict` imports the implementations only inside functions; the graph has them."""
    graph = import_graph()
    assert {"handrolled.models", "flax_impl.models", "nnx_impl.models"} <= graph["fmnist.app.predict"]
    assert "fmnist.checkpoints" in graph["fmnist.loop"]  # imported inside `fit`


def test_no_import_cycle_anywhere():
    assert find_cycle(import_graph()) is None


def test_imports_run_one_way():
    wrong = []
    for module, targets in import_graph().items():
        for target in targets:
            if layer(target) > layer(module):
                wrong.append(f"{module} -> {target}")
            top, target_top = module.split(".")[0], target.split(".")[0]
            if (layer(module) == layer(target) == 2 and top != target_top
                    and (top, target) not in ALLOWED_BETWEEN_IMPLEMENTATIONS):
                wrong.append(f"{module} -> {target} (one implementation importing another)")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_modules_stay_readable_in_size():
    """No module much over 300 lines (a module past a few hundred lines is usually two concerns)."""
    long = {name: n for name, path in module_files().items() if (n := len(path.read_text().splitlines())) > 330}
    assert not long, long


# The shared public names, in the order each module defines them (so the files diff line by line).
MODEL_NAMES = ("build_model", "from_weights", "to_weights")
TRAIN_NAMES = ("check", "make_optimizer", "loss_and_correct", "loss_and_grads", "train_step", "evaluate",
               "make_run_steps", "init_state", "train_and_evaluate")
# What a library makes impossible: Keras computes the loss in a compiled `Loss` object and runs its
# step (`Model.train_step`) and its loop inside `fit`, so no state and `run_steps` exist for `init_state`
# to return (its counterpart, `compiled_model`, holds the weights and the optimizer).
KERAS_MISSING = {"loss_and_correct", "train_step", "make_run_steps", "init_state"}
TRAIN_MODULES = {"handrolled": "handrolled.train", "flax_impl": "flax_impl.train", "nnx_impl": "nnx_impl.train",
                 "keras_baseline": "keras_baseline.train"}


def defined_order(module, names):
    """`names` that `module` defines itself, sorted by the line they start on (imported ones last)."""
    def line(name):
        obj = getattr(module, name)
        obj = getattr(obj, "__wrapped__", obj)
        try:
            if inspect.getmodule(obj) is module:
                return inspect.getsourcelines(obj)[1]
        except (OSError, TypeError):
            pass
        return 10**9
    return sorted(names, key=line)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_each_implementation_offers_the_shared_names_in_order(impl):
    if impl == "keras_baseline":
        pytest.importorskip("keras")
    train = importlib.import_module(TRAIN_MODULES[impl])
    models = importlib.import_module(f"{impl}.models")
    wanted = [n for n in TRAIN_NAMES if not (impl == "keras_baseline" and n in KERAS_MISSING)]
    assert [n for n in wanted if not callable(getattr(train, n, None))] == []
    assert [n for n in MODEL_NAMES if not callable(getattr(models, n, None))] == []
    assert defined_order(models, MODEL_NAMES) == list(MODEL_NAMES)
    own = [n for n in wanted if defined_order(train, [n]) and inspect.getmodule(getattr(train, n)) is train]
    assert defined_order(train, own) == own
