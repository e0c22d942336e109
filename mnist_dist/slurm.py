"""The thin submitit layer: one checkpointable ``Trial`` callable, executors, job states.

``Trial`` runs the same trainer as ``mnist-dist train`` inside a SLURM (or local) job. On
SLURM's signal (preemption, or ``signal_delay_s`` before the time limit) submitit calls
``Trial.checkpoint``, which hands back the same trial: the requeued job resumes from the
trainer's last ``checkpoint.pt``, i.e. the last completed epoch. Job states come from
``squeue`` (no accounting database needed); the trial folders are the record of results.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .errors import UserError, write_text_atomic
from .sweepfile import Resources

CLUSTERS = ("slurm", "local", "debug")
ERROR_FILE = "error.txt"
SLURM_TIMEOUT_S = 20  # a healthy slurmctld answers in well under a second
LIVE_STATES = {  # squeue state -> our state
    "PENDING": "pending",
    "CONFIGURING": "pending",
    "REQUEUED": "pending",
    "REQUEUE_HOLD": "pending",
    "REQUEUE_FED": "pending",
    "RESV_DEL_HOLD": "pending",
    "SUSPENDED": "pending",
    "RUNNING": "running",
    "COMPLETING": "running",
    "STAGE_OUT": "running",
    "SIGNALING": "running",
    "RESIZING": "running",
}


@dataclass
class Trial:
    """One trial of a sweep: ``train(config)`` into ``out``, resumable, failure recorded.

    Pickled by submitit into the job; ``checkpoint`` makes it requeue on preemption.
    """

    trial_id: str
    config: dict[str, Any]  # the resolved TrainConfig
    out: str  # DIR/<trial_id>
    sweep: str  # W&B group
    data_dir: str | None = None
    wandb: str = "off"
    wandb_project: str = "mnist-dist"
    cpu: bool = True
    cpus_per_task: int = 1
    attempt: int = 0  # 0 for the first run, +1 per requeue

    def __call__(self) -> dict[str, Any]:
        from .config import Runtime, TrainConfig
        from .train import train

        rank = self._export_distributed_env()
        # Local jobs get no SLURM_CPUS_PER_TASK; keep them to their share of the CPU.
        os.environ.setdefault("OMP_NUM_THREADS", str(self.cpus_per_task))
        out = Path(self.out)
        out.mkdir(parents=True, exist_ok=True)
        rt = Runtime(
            out=self.out,
            data_dir=self.data_dir,
            resume=True,
            cpu=self.cpu,
            wandb=self.wandb,
            wandb_project=self.wandb_project,
            wandb_group=self.sweep,
            progress=False,
        )
        try:
            result = train(TrainConfig(**self.config), rt)
        except Exception:  # not BaseException: submitit's requeue exits with SystemExit
            if rank == 0:
                write_text_atomic(out / ERROR_FILE, traceback.format_exc())
            raise
        if rank == 0:
            (out / ERROR_FILE).unlink(missing_ok=True)  # a stale failure from an earlier run
        return result

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called by submitit on SIGUSR2: requeue the same trial; train() resumes it."""
        import submitit

        return submitit.helpers.DelayedSubmission(replace(self, attempt=self.attempt + 1))

    @staticmethod
    def _export_distributed_env() -> int:
        """For a multi-task job, export RANK/WORLD_SIZE/MASTER_* so Accelerate joins them."""
        import submitit

        try:
            env = submitit.JobEnvironment()
        except RuntimeError:  # called outside a submitit job (e.g. the debug cluster)
            return 0
        if env.num_tasks > 1:
            # Keep every GPU visible: Accelerate picks cuda:LOCAL_RANK itself.
            submitit.helpers.TorchDistributedEnvironment().export(
                set_cuda_visible_devices=False, overwrite=True
            )
        return env.global_rank


def check_cluster(cluster: str, res: Resources) -> None:
    """Fail fast, before anything is written or submitted."""
    if cluster not in CLUSTERS:
        raise UserError(f"unknown cluster {cluster!r}; choose one of: {', '.join(CLUSTERS)}")
    if cluster == "debug" and res.nodes * res.tasks > 1:
        raise UserError("--cluster debug runs one process in this one; use local or slurm")
    if cluster == "local" and res.nodes > 1:
        raise UserError(f"--cluster local has one node, the sweep asks for {res.nodes}")
    if cluster != "slurm":
        return
    if shutil.which("sbatch") is None:
        raise UserError("SLURM not reachable: sbatch not found on PATH (try --cluster local)")
    try:
        ping = subprocess.run(
            ["scontrol", "ping"], capture_output=True, text=True, timeout=SLURM_TIMEOUT_S
        )
        ok = ping.returncode == 0 and "UP" in ping.stdout
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        raise UserError(
            "SLURM not reachable: slurmctld does not answer `scontrol ping` "
            "(start one with `bash launch/local_slurm.sh start`)"
        )


def make_executor(cluster: str, folder: Path, name: str, res: Resources):
    """The one place that maps [resources] onto submitit's parameters."""
    import submitit

    executor = submitit.AutoExecutor(folder=folder / "logs" / "%j", cluster=cluster)
    params: dict[str, Any] = dict(
        name=name,
        timeout_min=res.time_min,
        nodes=res.nodes,
        tasks_per_node=res.tasks,
        cpus_per_task=res.cpus_per_task,
        mem_gb=res.mem_gb,
        slurm_array_parallelism=res.array_parallelism,
        slurm_signal_delay_s=res.signal_delay_s,
    )
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(res, key) is not None:
            params[f"slurm_{key}"] = getattr(res, key)
    if res.sbatch_extra:
        params["slurm_additional_parameters"] = dict(res.sbatch_extra)
    if res.setup:
        params["slurm_setup"] = list(res.setup)
    executor.update_parameters(**params)
    return executor


def submit_array(executor, trials: list[Trial]) -> list[Any]:
    """One SLURM job array for the trials (capped by array_parallelism); returns the jobs."""
    import submitit

    try:
        with executor.batch():
            jobs = [executor.submit(t) for t in trials]
    except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError) as e:
        last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise UserError(f"sbatch refused the sweep: {last}") from None
    return jobs


def squeue_states(job_ids: list[str]) -> dict[str, str] | None:
    """SLURM state per job id ("123_4" for array tasks); None when squeue cannot answer.

    squeue knows finished jobs for MinJobAge seconds (300 by default) after they end.
    """
    arrays = sorted({j.split("_")[0] for j in job_ids})
    if not arrays or shutil.which("squeue") is None:
        return None
    try:
        proc = subprocess.run(
            ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(arrays)],
            capture_output=True,
            text=True,
            timeout=SLURM_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
        return None
    states = {}
    for line in proc.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        states[job_id] = state
    return states


def error_line(trial_dir: Path) -> str | None:
    """The last line of a failed trial's traceback, i.e. the exception."""
    path = trial_dir / ERROR_FILE
    if not path.is_file():
        return None
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "failed (empty error.txt)"
