"""Shared fixtures: a tiny IDX data set written per test, the real MNIST folder, a CLI runner,
and a local SLURM cluster of a test module's own.

Tests that need real MNIST read ``MNIST_DATA_DIR`` (CI points it at ../shared/data); the
others train on a tiny, valid IDX set written here, through the real loader.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ALL_CPUS = frozenset(os.sched_getaffinity(0))  # before a worker is pinned (pytest_configure)


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


def pytest_configure(config):
    """Under pytest-xdist (launch/test.sh runs -n auto), each worker gets CPUs of its own,
    and the trainers it starts size their threads from them: two 2-thread trainers on 2
    cores run several times slower than two 1-thread ones. The SLURM modules give their
    cluster every CPU (own_cluster)."""
    worker, count = (
        os.environ.get("PYTEST_XDIST_WORKER"),
        os.environ.get("PYTEST_XDIST_WORKER_COUNT"),
    )
    if worker and count and int(count) > 1:
        cpus, index = sorted(ALL_CPUS), int(worker.removeprefix("gw"))
        os.sched_setaffinity(0, cpus[index :: int(count)] or [cpus[index % len(cpus)]])


# Test files whose tests share what they build, so one worker runs all of them: the SLURM
# modules share munged and run one cluster at a time; the others build module fixtures
# (test_recognizer, and one test_train test, read the session's real-MNIST run, trained
# once: trained_step5; test_tune's killed and resumed tune).
SHARED_SCOPES = {
    "tests/test_slurm_cluster.py": "slurm",
    "tests/test_multinode.py": "slurm",
    "tests/test_recognizer.py": "recognizer",
    "tests/test_report.py": "report",
    "tests/test_tune.py": "tune",
    "tests/test_train.py::test_training_learns_real_digits_with_a_wide_margin": "recognizer",
}


@pytest.hookimpl(optionalhook=True)  # an xdist hook: without xdist, the suite runs serially
def pytest_xdist_make_scheduler(config, log):
    """Every other test is a unit of its own, sent to whichever worker is free."""
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return shared_scope(nodeid) or nodeid

    return Scheduling(config, log)


def shared_scope(nodeid: str) -> str | None:
    return SHARED_SCOPES.get(nodeid) or SHARED_SCOPES.get(nodeid.split("::")[0])


# The shared scopes go out first, the longest first: a worker runs the SLURM modules from
# the start (minutes of jobs, mostly waiting on them) while the others take everything else.
# Handed out last, the SLURM scope alone set the suite's wall time.
FIRST = ("slurm", "tune", "recognizer", "report")


def pytest_collection_modifyitems(items):
    """Real-cluster tests are slow tests too: `pytest -m "not slow"` is the edit-test loop."""
    for item in items:
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.slow)
    rank = {scope: i for i, scope in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(shared_scope(item.nodeid), len(FIRST)))  # stable


@pytest.fixture(scope="session")
def trained_step5(tmp_path_factory) -> Path:
    """A run folder trained once per test run and shared: step5, 1 epoch of its registered
    recipe on the 60,000 real training images (about 98%; a minute on 2 cores). OneCycle
    anneals to near zero LR by the last batch, so the model is a settled one."""
    root = real_mnist_root()
    out = tmp_path_factory.mktemp("trained") / "step5"
    proc = run_cli("train", "--step", "step5", "--epochs", "1", "--no-progress",
                   "--data-dir", str(root), "--out", str(out), timeout=1800)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


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


def cli_error(capsys, *argv: str) -> str:
    """Bad input, in-process through ``mnist-dist``'s own entry: exit 2, nothing on stdout,
    exactly one stderr line and no traceback; returns that line. (One real subprocess per
    command, through ``run_cli``, keeps the installed CLI honest; the rest run here.)"""
    from mnist_dist.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert exit_.value.code == 2 and not out, (argv, out)
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


SLURM_SCRIPT = REPO / "launch" / "local_slurm.sh"
TIMING_KEYS = ("seconds", "eval_seconds", "images_per_s")  # wall-clock: differ between runs


def timeless(history: list[dict]) -> list[dict]:
    """A result's history without its wall-clock keys: what two equal runs share."""
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]


def cluster_env(name: str, partition: str, ctld_port: int, net: str) -> dict[str, str]:
    """local_slurm.sh settings for a cluster apart from the default one: its own slurm.conf,
    state folder, name, partition and ports (slurmd listens on ctld_port + 1)."""
    state = f"/var/tmp/mnist-dist-slurm-{name}"
    return {
        "SLURM_CONF": f"{state}/slurm.conf",
        "MNIST_SLURM_STATE": state,
        "MNIST_SLURM_CLUSTER": name,
        "MNIST_SLURM_PARTITION": partition,
        "MNIST_SLURM_CTLD_PORT": str(ctld_port),
        "MNIST_SLURM_SLURMD_PORT": str(ctld_port + 1),
        "MNIST_SLURM_NET": net,
    }


def why_no_local_cluster() -> str | None:
    """Why a test module cannot start a local cluster of its own here, or None."""
    if os.geteuid() != 0:
        return "needs root: it starts a local SLURM cluster of its own (launch/local_slurm.sh)"
    if shutil.which("sbatch") is None:
        return "sbatch not found: install SLURM with `bash launch/local_slurm.sh install`"
    return None


def local_slurm(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``bash launch/local_slurm.sh ARGS`` for the cluster that ``env`` names."""
    cmd = ["bash", str(SLURM_SCRIPT), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})


@contextmanager
def own_cluster(env: dict[str, str], *start_args: str):
    """A test module's own SLURM cluster (``local_slurm.sh start --fresh``), every SLURM
    command pointed at it through ``env`` meanwhile, stopped afterwards.

    Apart from the default cluster, a developer's sweep queued there neither delays these
    tests nor is touched by them; --fresh empties its queue, so jobs that a run cut short
    left there (the machine went down, or pytest was killed) never run ahead of the tests.
    Two test sessions at once on one machine would share it: run one at a time."""
    full = {**os.environ, **env}
    pinned = os.sched_getaffinity(0)
    os.sched_setaffinity(0, ALL_CPUS)  # the daemons and their jobs: a machine of their own
    try:
        proc = local_slurm("start", "--fresh", *start_args, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            yield
    finally:
        if (Path(env["MNIST_SLURM_STATE"]) / "owned").is_file():  # else a test stopped it
            queue = subprocess.run(
                ["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=full
            )
            if queue.returncode == 0 and queue.stdout.split():  # a failed test's job
                subprocess.run(["scancel", *queue.stdout.split()], env=full)
                time.sleep(2)
            local_slurm("stop", env=env)
        os.sched_setaffinity(0, pinned)
