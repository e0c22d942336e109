"""Shared fixtures: a tiny IDX data set written per test, the real MNIST folder, a CLI runner.

Tests that need real MNIST read ``MNIST_DATA_DIR`` (CI points it at ../shared/data); the
others train on a tiny, valid IDX set written here, through the real loader.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (magic 0x0000 08 <ndim>, big-endian dims)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_tiny_mnist(root: Path, n_train: int = 512, n_test: int = 256, seed: int = 0) -> Path:
    """A learnable toy set: each class is a bright bar at its own row band, plus noise."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n)
        images = rng.integers(0, 40, size=(n, 28, 28))
        for i, y in enumerate(labels):
            images[i, 4 + 2 * y : 6 + 2 * y, 6:22] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> Path:
    """Folder for --data-dir holding a tiny, valid MNIST/raw set."""
    return make_tiny_mnist(tmp_path / "data")


def real_mnist_root() -> Path:
    """The real MNIST root from MNIST_DATA_DIR; skips the test (with the reason) when unset."""
    root = os.environ.get("MNIST_DATA_DIR")
    if not root or not (Path(root) / "MNIST" / "raw").is_dir():
        pytest.skip("real MNIST needed: set MNIST_DATA_DIR to a folder holding MNIST/raw")
    return Path(root)


@pytest.fixture
def real_mnist() -> Path:
    """The real MNIST root from MNIST_DATA_DIR; skipped (with the reason) when unset."""
    return real_mnist_root()


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, cwd=None):
    """Run ``python -m mnist_dist ARGS`` as users do; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mnist_dist", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd,
    )


def assert_one_line_error(proc, *fragments: str) -> None:
    """Bad input: non-zero exit, exactly one stderr line naming the problem, no traceback."""
    assert proc.returncode != 0, proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for frag in fragments:
        assert frag in lines[0], lines[0]
