"""Another study's figures beside ours: a strict TOML file of rows, matched to report rows.

    mnist-dist report DIR --reference results/study/origin.toml

The file (``results/study/origin.toml`` holds the origin study's)::

    name = "origin"                     # the column's name
    description = "..."                 # optional
    [[rows]]
    step = "step4"                      # matches every report row of this step...
    # label = "step4 (lr=0.05)"         # ...or, when given, the report row of this label
    params = 7074
    train_acc = 98.94                   # percent
    test_acc = 99.46                    # percent
    runs = 1                            # how many runs the figures stand for
    epoch = "best"                      # "best" (picked on the test set) or "final"

Columns are headed ``origin (one run, best epoch)``, from ``name``, ``runs`` and
``epoch``: a single run's best epoch is not a mean over seeds, and the heading says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

TOP_KEYS = {"name": str, "description": str, "rows": list}
ROW_KEYS = {
    "step": str,
    "label": str,
    "params": int,
    "train_acc": (int, float),
    "test_acc": (int, float),
    "runs": int,
    "epoch": str,
}
ROW_REQUIRED = ("step", "runs", "epoch")
EPOCHS = ("best", "final")


def _check(table: dict, kinds: dict, where: str, path: Path) -> None:
    for key, value in table.items():
        if key not in kinds:
            valid = ", ".join(kinds)
            raise UserError(f"{path}: unknown key {key!r} in {where}; valid keys: {valid}")
        kind = kinds[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            want = {str: "a string", int: "an integer", list: "a list"}.get(kind, "a number")
            raise UserError(f"{path}: {where}.{key} must be {want}, got {value!r}")


def load_reference(path: str | Path) -> dict[str, Any]:
    """``{"file", "name", "description", "label", "rows"}``; any problem is one UserError
    line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--reference {path}: no such file (e.g. results/study/origin.toml)")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: invalid TOML: {e}") from None
    _check(data, TOP_KEYS, "the top level", path)
    if not isinstance(data.get("name"), str) or not data["name"].strip():
        raise UserError(f'{path}: needs name = "..." (the column\'s name, e.g. origin)')
    rows = data.get("rows")
    if not rows:
        raise UserError(f"{path}: needs at least one [[rows]] table")
    seen = set()
    for i, row in enumerate(rows):
        where = f"rows[{i}]"
        if not isinstance(row, dict):
            raise UserError(f"{path}: {where} must be a table ([[rows]])")
        _check(row, ROW_KEYS, where, path)
        for key in ROW_REQUIRED:
            if key not in row:
                raise UserError(f"{path}: {where} lacks {key!r} (needs {', '.join(ROW_REQUIRED)})")
        if row["epoch"] not in EPOCHS:
            raise UserError(f"{path}: {where}.epoch must be one of {EPOCHS}, got {row['epoch']!r}")
        if row["runs"] < 1:
            raise UserError(f"{path}: {where}.runs must be at least 1, got {row['runs']}")
        for key in ("train_acc", "test_acc"):
            if key in row and not 0 <= row[key] <= 100:
                raise UserError(f"{path}: {where}.{key} is a percentage, got {row[key]}")
        key = row.get("label", row["step"])
        if key in seen:
            raise UserError(f"{path}: two rows for {key!r}; keep one")
        seen.add(key)
    tags = {tag(r) for r in rows}
    label = f"{data['name']} ({tags.pop()})" if len(tags) == 1 else data["name"]
    return dict(
        file=str(path),
        name=data["name"],
        description=data.get("description", ""),
        label=label,
        rows=rows,
    )


def tag(row: dict[str, Any]) -> str:
    """``one run, best epoch``: what the row's figures stand for."""
    runs = "one run" if row["runs"] == 1 else f"{row['runs']} runs"
    return f"{runs}, {row['epoch']} epoch"


def match(groups: list[dict[str, Any]], ref: dict[str, Any]) -> list[str]:
    """Set ``g["reference"]`` on each group (the matching row, or None); a row with a
    ``label`` matches that report row, else every row of its step. Returns warnings for a
    parameter count that differs (not the same model)."""
    warnings = []
    for g in groups:
        by_label = [r for r in ref["rows"] if r.get("label") == g["label"]]
        by_step = [r for r in ref["rows"] if "label" not in r and r["step"] == g["step"]]
        row = (by_label + by_step + [None])[0]
        g["reference"] = dict(row, name=ref["name"], tag=tag(row)) if row else None
        params = row.get("params") if row else None
        if params is not None and isinstance(g["params"], int) and params != g["params"]:
            warnings.append(
                f"{g['label']} has {g['params']:,} parameters, {ref['name']}'s {row['step']} "
                f"{row['params']:,} ({ref['file']}): not the same model"
            )
    return warnings


def cell(g: dict[str, Any], key: str, ref: dict[str, Any]) -> str:
    """One reference figure of a group's row, ``—`` where the file has none."""
    row = g.get("reference")
    if not row or key not in row:
        return "—"
    text = f"{row[key]:,}" if key == "params" else f"{row[key]:.2f}"
    return text if ref["label"] != ref["name"] else f"{text} ({row['tag']})"
