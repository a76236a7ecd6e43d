"""The side-by-side pages (docs/side-by-side/) are what docs/side_by_side.py makes from the real
modules today: change a quoted function and this fails until the pages are regenerated."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_generator():
    spec = importlib.util.spec_from_file_location("side_by_side", ROOT / "docs" / "side_by_side.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pages_are_up_to_date():
    pytest.importorskip("keras")
    stale = [str(path.relative_to(ROOT)) for path, text in load_generator().pages().items()
             if not path.exists() or path.read_text() != text]
    assert not stale, f"regenerate with `python docs/side_by_side.py`: {stale}"


def test_a_missing_parity_row_is_an_error_not_an_empty_table():
    with pytest.raises(ValueError, match="no row"):
        load_generator().parity_rows(["a check nobody wrote"])
