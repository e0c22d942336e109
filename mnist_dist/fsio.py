"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

Every file the tool writes for others to read (config, checkpoint, result, sweep record,
W&B run state, reports, plots) goes through ``atomic_open``: a unique temporary file
beside the target (``tempfile.mkstemp``), fsync, then ``os.replace``. Any exception on
the way removes the temporary file and leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_UMASK = os.umask(0o022)  # read it (and put it back): os.umask only reads by setting
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """``with atomic_open(p, "wb") as f: torch.save(state, f)``; text ("w") or binary ("wb")."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are for others to read
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def finite(data: Any) -> Any:
    """``data`` with every NaN or infinite float as None: JSON has neither (a diverged
    run's loss is ``null`` in result.json, never the ``NaN`` that strict parsers refuse)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [finite(value) for value in data]
    return data


def dumps(data: Any) -> str:
    """Valid JSON, always (``allow_nan=False`` after ``finite``), indented for people."""
    return json.dumps(finite(data), indent=2, allow_nan=False)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, dumps(data) + "\n")
