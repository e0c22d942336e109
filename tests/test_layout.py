"""The package's layout (issue #21): core modules at the top, one subpackage per concern,
no import circles, no import that runs back up, and every module the CLI names imports."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys

import pytest

from mnist_dist.cli import COMMANDS

from .conftest import REPO

PKG = REPO / "mnist_dist"
ENTRIES = {"cli", "train", "__main__", "slurm"}  # dispatchers and a pickle shim, at the top
CONCERNS = {"training", "sweeps", "report", "bench", "recognizer", "tune"}


def modules() -> list[str]:
    """Every module of the package, dotted below mnist_dist ("training.loop"); a
    subpackage by its own name (its __init__)."""
    names = [p.relative_to(PKG).with_suffix("").as_posix() for p in PKG.rglob("*.py")]
    return sorted(n.removesuffix("/__init__").replace("/", ".") for n in names if n != "__init__")


def imports(name: str) -> set[str]:
    """The package modules that ``name`` imports anywhere (module level or inside a
    function), resolved to dotted names below mnist_dist."""
    path = PKG / (name.replace(".", "/") + ("/__init__.py" if name in CONCERNS else ".py"))
    here = name.split(".")[:-1] if name not in CONCERNS else [name]
    found, known = set(), set(modules())
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - node.level + 1] if node.level > 1 else here
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            for alias in node.names:  # "from ..training import loop" names a module
                full = f"{target}.{alias.name}"
                found.add(full if full in known else target)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mnist_dist."):
            found.add(node.module.removeprefix("mnist_dist."))
    return {m for m in found if m and m != name}


def test_every_module_the_cli_names_imports():
    for name, (module, _) in COMMANDS.items():
        entry = importlib.import_module(f"mnist_dist.{module}")
        assert callable(getattr(entry, f"{name}_main", None) or entry.main), name


def test_every_module_imports_and_each_concern_says_what_it_owns():
    for name in modules():
        if name == "__main__":  # importing it runs the CLI
            continue
        module = importlib.import_module(f"mnist_dist.{name}")
        if name in CONCERNS:
            assert module.__doc__ and module.__all__, name
            for export in module.__all__:
                assert getattr(module, export) is not None, (name, export)


def test_no_import_circles():
    graph = {m: imports(m) for m in modules()}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for dep in sorted(graph.get(m, ())):
            if state.get(dep) == 1:
                pytest.fail("import circle: " + " -> ".join([*path, m, dep]))
            if dep not in state:
                visit(dep, [*path, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_no_import_runs_back_up():
    for m in modules():
        top = m.split(".")[0]
        for dep in imports(m):
            dep_top = dep.split(".")[0]
            if m in ENTRIES or dep_top == "_exports":
                continue
            if top not in CONCERNS:  # a core module: never a concern's module
                assert dep_top not in CONCERNS, f"core {m} imports {dep}"
            assert dep not in ENTRIES, f"{m} imports the entry {dep}"


NO_TORCH = """import sys
class NoTorch:  # any `import torch` raises; libraries that merely look for it see nothing
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "accelerate"):
            raise ImportError(f"{name} is blocked: this command must not need it")
sys.meta_path.insert(0, NoTorch())
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["train", "--help"],
        ["status", "results/study", "--json"],
        ["report", "results/study", "--json"],
        ["sweep", "jobs/study.toml", "--dry-run", "--out", "/nonexistent/dry-run"],
    ],
    ids=["help", "train-help", "status", "report", "sweep-dry-run"],
)
def test_commands_that_need_no_model_start_without_torch(argv):
    """Each command runs in a fresh interpreter where importing torch fails."""
    code = NO_TORCH + "from mnist_dist.cli import main\n"
    code += f"try:\n    main({argv!r})\nexcept SystemExit as e:\n    assert e.code in (0, None)\n"
    code += "assert 'torch' not in sys.modules, 'torch was imported'\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout
