"""What a run ran on (threads, CPU model, versions, git commit) and its result dict.

Recorded in ``result.json`` so that a rerun that differs can be explained from the files:
CPU runs repeat bit for bit only at a fixed thread count (step4 seed 0 gave 99.33 on two
threads and 99.20 on one), and the CPU kind and torch build change the float rounding.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

from ..config import TARGET_ACC, Runtime, TrainConfig


def cpu_threads(explicit: int | None = None) -> int:
    """Threads for this process: what the launcher grants, never oversubscribed.

    In order: ``--threads`` (a sweep trial passes its cpus_per_task, and
    launch/sbatch_accelerate.sh its node's CPUs per process), ``SLURM_CPUS_PER_TASK`` (one
    process per task), ``OMP_NUM_THREADS`` (torchrun sets 1), else the CPUs in this
    process's affinity divided by ``LOCAL_WORLD_SIZE``: two trainers on two cores must not
    each start two threads (an epoch went from 56 s to 336 s that way).
    """
    if explicit:
        return max(1, explicit)
    for var in ("SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return max(1, int(os.environ[var]))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, len(os.sched_getaffinity(0)) // local_world)


def cpu_model() -> str:
    """``AMD EPYC`` or ``Intel(R) Xeon(R) ...``: what lscpu calls "Model name"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_avg() -> list[float]:
    """Runnable processes averaged over 1, 5 and 15 minutes."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_facts(device, load_before: list[float]) -> dict[str, Any]:
    """The machine a benchmark ran on, in one shape for every ``mnist-dist bench`` mode.

    Contention: the load average before and after, against the cores this process may use.
    With more runnable processes than cores, OpenMP threads spin-wait on each other.
    """
    import torch

    return dict(
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        cpu_model=cpu_model(),
        cores=len(os.sched_getaffinity(0)),
        load_avg_before=load_before,
        load_avg_after=load_avg(),
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
        torch=torch.__version__,
    )


def contention_lines(r: dict[str, Any]) -> list[str]:
    """What a bench printout says of the load; reads files of every version (a bench
    --json file from before machine_facts has a 1-minute ``load_avg`` pair)."""
    before, after = r.get("load_avg_before"), r.get("load_avg_after")
    if before is None:  # the older single-step record
        before, after = [r["load_avg"][0]], [r["load_avg"][1]]
    lines = [f"load average (1, 5, 15 min): {before} before, {after} after, {r['cores']} cores"]
    if max(before[0], after[0]) > r["cores"]:
        lines.append("note: busy machine, more runnable processes than cores: contended")
    return lines


def git_commit() -> str | None:
    """The commit this package runs from, with ``+dirty`` for uncommitted changes."""
    here = Path(__file__).parent
    try:
        run = lambda *a: subprocess.run(  # noqa: E731
            ["git", "-C", str(here), *a], capture_output=True, text=True, timeout=5
        )
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    import accelerate
    import torch
    import torchvision

    from .. import __version__

    return dict(
        mnist_dist=__version__,
        python=platform.python_version(),
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        accelerate=accelerate.__version__,
    )


def run_env(accelerator, rt: Runtime) -> dict[str, Any]:
    """Where and how the run ran: not part of its identity, recorded to explain reruns.

    A collective (``hosts``: every process's hostname, by rank): call it on every rank.
    """
    import torch
    from accelerate.utils import gather_object

    device = accelerator.device
    return dict(
        world_size=accelerator.num_processes,
        hosts=gather_object([socket.gethostname()]),
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        threads=torch.get_num_threads(),
        cpu_model=cpu_model(),
        versions=versions(),
    )


def make_result(
    cfg: TrainConfig,
    history: list[dict],
    *,
    params: int,
    n_train: int,
    n_test: int,
    wall_seconds: float,
    run: dict[str, Any],
    state: str = "done",
) -> dict[str, Any]:
    """The result.json dict: pure, from the config, the per-epoch history and the run facts.

    The headline is the final epoch's test accuracy, of the weights the recipe names
    (``headline``: the model, or its EMA); the best epoch is picked on the test set, so it
    is kept for comparison only. A run that never scored the test set (``test_eval``
    never: tuning) has None there, and its validation figures only. ``state`` is "done",
    or why the per-epoch hook stopped the run early ("diverged", "pruned"): its history
    then ends at that epoch.
    """
    tested = [h for h in history if "test_acc" in h]  # every epoch, the last, or none
    best = max(tested, key=lambda h: h["test_acc"]) if tested else {}
    last = history[-1]
    finals = {  # with an EMA, both sets of weights; test_acc/val_acc are the headline's
        f"final_{w}_{s}_acc": last.get(f"{w}_{s}_acc")
        for w in ("model", "ema")
        for s in ("test", "val")
        if cfg.ema_decay
    }
    return dict(
        state=state,
        step=cfg.step,
        seed=cfg.seed,
        params=params,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        mixed_precision=cfg.mixed_precision,
        train_images=n_train,
        val_images=cfg.val_split,
        test_images=n_test,
        history=history,
        headline=cfg.headline,
        final_test_acc=last.get("test_acc"),
        final_val_acc=last.get("val_acc"),
        **finals,
        best_test_acc=best.get("test_acc"),
        best_epoch=best.get("epoch"),
        first_epoch_at_target=next(
            (h["epoch"] for h in tested if h["test_acc"] >= TARGET_ACC), None
        ),
        wall_seconds=wall_seconds,
        train_seconds=sum(h["seconds"] for h in history),
        trial_id=cfg.trial_id(),
        config_hash=cfg.config_hash(),
        config=cfg.to_dict(),
        **run,
    )
