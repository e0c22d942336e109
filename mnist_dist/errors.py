"""One-line errors for bad input: a message that names the problem and the fix, exit 2."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


class UserError(Exception):
    """Bad input. Entry points print ``mnist-dist: error: <message>`` and exit 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with bad flags as one ``UserError`` line instead of a usage dump."""

    def error(self, message: str):
        raise UserError(f"{message} (see `{self.prog} --help`)")


def cli_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn ``UserError`` (and Ctrl-C) into one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"mnist-dist: error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("mnist-dist: interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a file so that readers see the old one or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
