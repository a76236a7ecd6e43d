"""JSON the project writes: strict (no NaN or Infinity tokens, which `json.dumps` emits by default
and which browsers, `jq` and most languages reject), and written atomically.

Non-finite floats become `null`, in nested dicts, lists and tuples alike. `write_json` writes a
temporary file in the same directory, flushes it to disk, then renames it over the target: a
reader, or a run killed at any instant, sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path


def strict(value):
    """`value` with every non-finite float (nan, inf, -inf) replaced by None, NumPy scalars as Python."""
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # NumPy / JAX scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value, indent: int | None = 2) -> str:
    """Strict JSON text of `value` (`allow_nan=False` would raise; this writes null instead)."""
    return json.dumps(strict(value), indent=indent, allow_nan=False)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file and a rename (atomic on POSIX filesystems)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # what open() would give; mkstemp makes it private (0600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, value) -> Path:
    """`dumps(value)` + newline, written atomically to `path`."""
    return atomic_write_text(path, dumps(value) + "\n")
