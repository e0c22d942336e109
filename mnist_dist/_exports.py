"""Lazy exports for the subpackages' ``__init__``: ``from mnist_dist.report import
report_main`` imports the module that defines it only then, so importing one concern
never loads another's dependencies (torch, matplotlib, submitit)."""

from __future__ import annotations

from importlib import import_module
from typing import Any


def lazy(package: str, exports: dict[str, str]):
    """(__all__, __getattr__) for ``package``: ``exports`` maps a name to its module."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f"{package}.{exports[name]}"), name)

    return sorted(exports), __getattr__
