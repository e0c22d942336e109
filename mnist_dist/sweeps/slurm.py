"""The thin submitit layer: one checkpointable ``Trial`` callable and its executors.

``Trial`` runs the same trainer as ``mnist-dist train`` inside a SLURM (or local) job. On
SLURM's signal (preemption, or ``signal_delay_s`` before the time limit) submitit calls
``Trial.checkpoint``, which hands back the same trial: the requeued job resumes from the
trainer's last ``checkpoint.pt``, i.e. the last completed epoch. Job states come from
``squeue`` (no accounting database needed; see ``sweeps.state.trial_states``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..fsio import write_text
from ..rundir import ERROR, FolderBusy
from .spec import Resources
from .state import SLURM_TIMEOUT_S

CLUSTERS = ("slurm", "local", "debug")


@dataclass
class Trial:
    """One job of a sweep: ``train(config)`` into ``out``, resumable, failure recorded; with
    several configs (seeds of one config, ``pack_seeds``), ``train --seeds`` of them into
    the sweep folder, each seed in its own trial folder.

    Pickled by submitit into the job; ``checkpoint`` makes it requeue on preemption.
    """

    trial_ids: list[str]
    configs: list[dict[str, Any]]  # the resolved TrainConfigs: one, or a pack's seeds
    out: str  # DIR/<trial_id>, or for a pack the sweep folder DIR
    wandb_group: str  # <sweep>/<config label>: W&B averages seeds of one config only
    data_dir: str | None = None
    wandb: str = "off"
    wandb_project: str = "mnist-dist"
    cpu: bool = True
    cpus_per_task: int = 1  # threads per process: what SLURM granted, whatever the shell said

    def folders(self) -> list[Path]:
        if len(self.configs) == 1:
            return [Path(self.out)]
        return [Path(self.out) / tid for tid in self.trial_ids]

    def __call__(self) -> Any:
        from ..config import Runtime, TrainConfig
        from ..training.loop import train
        from ..training.packed import train_seeds

        rank = self._export_distributed_env()
        # A stray OMP_NUM_THREADS from the submitting shell must not override the grant.
        os.environ["OMP_NUM_THREADS"] = str(self.cpus_per_task)
        rt = Runtime(
            out=self.out,
            data_dir=self.data_dir,
            resume=True,
            cpu=self.cpu,
            threads=self.cpus_per_task,
            wandb=self.wandb,
            wandb_project=self.wandb_project,
            wandb_group=self.wandb_group,
            progress=False,
        )
        cfg = TrainConfig.from_dict(self.configs[0])
        try:
            if len(self.configs) == 1:
                result = train(cfg, rt)
            else:
                rt.seeds = [c["seed"] for c in self.configs]
                result = train_seeds(cfg, rt)
        except FolderBusy:  # another live trainer owns the folder: its files stay its own
            raise
        except Exception:  # not BaseException: submitit's requeue exits with SystemExit
            # Every rank may write: the first rank of this job to fail names itself and its
            # cause; a rank that fails after it (a broken collective) leaves that alone.
            job = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")
            job = job or f"pid {os.getpid()}"  # debug: in-process, one attempt per process
            head = f"rank {rank} on {socket.gethostname()} (job {job}) failed:\n"
            for folder in self.folders():
                path = folder / ERROR
                earlier = path.read_text(errors="replace") if path.is_file() else ""
                if not (earlier.startswith("rank ") and f"(job {job}) failed" in earlier):
                    write_text(path, head + traceback.format_exc())
            raise
        if rank == 0:
            for folder in self.folders():  # a stale failure from an earlier run
                (folder / ERROR).unlink(missing_ok=True)
        return result

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called by submitit on SIGUSR2: requeue the same trial; train() resumes it."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)

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


def check_cluster(cluster: str, res: Resources, configs: list) -> None:
    """Fail fast, before anything is written or submitted."""
    if cluster not in CLUSTERS:
        raise UserError(f"unknown cluster {cluster!r}; choose one of: {', '.join(CLUSTERS)}")
    if cluster == "debug" and res.nodes * res.tasks > 1:
        raise UserError("--cluster debug runs one process in this one; use local or slurm")
    if res.pack_seeds > 1 and res.nodes * res.tasks > 1:
        raise UserError(
            "[resources] pack_seeds packs seeds in one process; it cannot also run "
            f"{res.nodes * res.tasks} processes per trial: set nodes and tasks_per_node to 1"
        )
    if cluster == "debug" and len({c.mixed_precision for c in configs}) > 1:
        raise UserError(
            "--cluster debug runs every trial in this one process, and Accelerate fixes mixed "
            "precision once per process: use --cluster local for a grid over mixed_precision"
        )
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


def make_executor(cluster: str, folder: Path, name: str, res: Resources, token: str = ""):
    """The one place that maps [resources] onto submitit's parameters.

    ``token`` goes into the job's SLURM comment, so that a job number reused by a restarted
    cluster is never mistaken for ours (see sweeps.state.slurm_state).
    """
    import submitit

    executor = submitit.AutoExecutor(
        folder=folder / "logs" / "%j",
        cluster=cluster,
        slurm_max_num_timeout=res.max_num_timeout,  # dinov2's 30; submitit's default is 3
    )
    executor.update_parameters(**executor_params(name, res, token))
    return executor


def executor_params(name: str, res: Resources, token: str = "") -> dict[str, Any]:
    """submitit's parameters for [resources]: what `sweep --dry-run` shows, what becomes the
    job's #SBATCH lines (slurm_setup: shell lines before srun)."""
    params: dict[str, Any] = dict(
        name=name,
        timeout_min=res.time_min,
        nodes=res.nodes,
        tasks_per_node=res.tasks,
        cpus_per_task=res.cpus_per_task,
        mem_gb=res.mem_gb,
        slurm_array_parallelism=res.array_parallelism,
        slurm_signal_delay_s=res.signal_delay_s,
        # A task that dies takes the job's other tasks with it, at once: a lost rank of a
        # multi-node trial fails the job (no requeue) instead of leaving the others waiting.
        slurm_srun_args=["--kill-on-bad-exit=1"],
    )
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(res, key) is not None:
            params[f"slurm_{key}"] = getattr(res, key)
    if token:
        params["slurm_comment"] = token
    if res.sbatch_extra:
        params["slurm_additional_parameters"] = dict(res.sbatch_extra)
    if res.setup:
        params["slurm_setup"] = list(res.setup)
    return params


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
