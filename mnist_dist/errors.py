"""One-line errors for bad input: a message that names the problem and the fix, exit 2."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
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
        except BrokenPipeError:  # a reader that stopped early (`| head`) is no error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)

    return wrapper
