"""The sweep folder: its record, its lock, and each trial's one state.

A sweep folder holds ``sweep.json`` (the record: its trials and every job submitted), one
run folder per trial (``rundir``), and submitit's ``logs/``. Everything is written through
``fsio.atomic_open``; ``sweep.json`` only under ``record_lock``.

``trial_states`` is the one place that decides done / running / pending / failed /
missing / corrupt / unknown: ``mnist-dist status`` and ``mnist-dist report`` both read it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..errors import UserError
from ..fsio import write_json
from ..rundir import CONFIG, ERROR, RESULT, STOPPED, collapsed, error_line, read_result

RECORD, LOCK = "sweep.json", ".sweep.lock"
LOCK_HOLDER = ".sweep.lock.holder"  # who holds LOCK: named when another command times out
# STOPPED ("diverged", "pruned"): finished early, as the trainer's per-epoch hook decided
# (result.json's state); final, like done, so never resubmitted
STATES = ("done", *STOPPED, "running", "pending", "failed", "missing", "corrupt", "unknown")
SLURM_TIMEOUT_S = 20  # a healthy slurmctld answers in well under a second
LIVE_STATES = {  # squeue state -> our state
    **dict.fromkeys(["PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD"], "pending"),
    **dict.fromkeys(["REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED"], "pending"),
    **dict.fromkeys(["RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING"], "running"),
}


# ---- one sweep folder -----------------------------------------------------------------


def load_record(out: Path) -> dict[str, Any] | None:
    path = out / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record.get("name"), str):
            raise ValueError("no sweep name")
        for t in record["trials"]:
            str(t["trial_id"])
            if not isinstance(t["config"], dict):
                raise TypeError(f"trial {t['trial_id']!r} has no config table")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(
            f"{path} is not a readable sweep record ({type(e).__name__}: {e}); move it away "
            "or use another --out"
        ) from None
    return record


@contextlib.contextmanager
def record_lock(out: Path, timeout_s: float = 120) -> Iterator[None]:
    """Held while a sweep command reads, submits and writes the record: two reruns of one
    sweep folder never decide on the same trials at once. An OS lock (fcntl, through
    filelock): it dies with its process, so a timeout means a live holder, named."""
    from filelock import FileLock, Timeout

    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / LOCK), timeout=timeout_s)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(
            f"another sweep command holds {out / LOCK} ({lock_holder(out)}) and did not let "
            f"go within {timeout_s:g} s; wait for it to end, then rerun"
        ) from None
    try:
        holder = dict(pid=os.getpid(), host=socket.gethostname(), since=time.time(),
                      command=" ".join(sys.argv))  # fmt: skip
        write_json(out / LOCK_HOLDER, holder)
        yield
    finally:
        lock.release()


def lock_holder(out: Path) -> str:
    try:
        h = json.loads((out / LOCK_HOLDER).read_text())
        since = time.strftime("%H:%M:%S", time.localtime(h["since"]))
        return f"pid {h['pid']} on {h['host']} since {since}: {h['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


def write_record(out: Path, record: dict[str, Any]) -> None:
    write_json(out / RECORD, record)


def trial_folders(out: Path, record: dict[str, Any]) -> dict[str, Path]:
    """trial id -> its folder. A folder named by an older id scheme is found by its config."""
    folders = {t["trial_id"]: Path(t.get("path") or out / t["trial_id"]) for t in record["trials"]}
    lost = {tid for tid, d in folders.items() if not d.is_dir()}
    if lost:
        for cfg_path in out.glob(f"*/{CONFIG}"):
            try:
                cfg = TrainConfig.from_dict(json.loads(cfg_path.read_text()))
                tid = cfg.trial_id()
            except (UserError, ValueError, TypeError, OSError):
                continue
            if tid in lost:
                folders[tid] = cfg_path.parent
    return folders


def token_jobs(name: str, token: str) -> dict[int, str] | None:
    """{array index: job id} of the jobs squeue lists for sweep ``name`` whose comment is
    ``token`` (a lone job is index 0); None when squeue does not answer."""
    if shutil.which("squeue") is None:
        return None
    cmd = ["squeue", "-h", "-r", "-t", "all", "-n", name, "-o", "%i|%k"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SLURM_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    jobs = {}
    for line in proc.stdout.splitlines():
        job_id, _, comment = line.strip().partition("|")
        if comment == token:
            jobs[int(job_id.partition("_")[2] or 0)] = job_id
    return jobs


def squeue_states(job_ids: list[str]) -> dict[str, tuple[str, str, str]] | None:
    """(state, name, comment) per job id ("123_4" for array tasks); None when squeue does
    not answer. squeue knows finished jobs for MinJobAge seconds (300 by default)."""
    arrays = sorted({j.split("_")[0] for j in job_ids})
    if not arrays or shutil.which("squeue") is None:
        return None
    try:
        proc = subprocess.run(
            ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%j|%k", "-j", ",".join(arrays)],
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
        job_id, state, name, comment = (line.strip().split("|", 3) + ["", "", ""])[:4]
        states[job_id] = (state, name, comment)
    return states


def slurm_state(job: dict[str, Any], live: dict[str, tuple[str, str, str]], sweep: str) -> str:
    """squeue's state for our job, or "" when squeue no longer knows it. A restarted
    cluster reuses job numbers: a job whose name or submission token is not ours is gone."""
    state, name, comment = live.get(job["job_id"], ("", "", ""))
    token = job.get("token")
    if state and (name != sweep or (token and comment != token)):
        return ""
    return state


def local_alive(pid: str) -> bool:
    """A local job is its submitit process; a reused pid runs something else."""
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (ValueError, OSError):
        return False
    return b"submitit" in cmdline


def trial_states(out: Path, record: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per trial: state, latest job, final accuracy or the reason it has none.

    The trial folder decides done, diverged or pruned (result.json's state), corrupt (an
    unreadable result.json) and failed (error.txt); the scheduler decides pending and
    running. A job that ended without either counts as failed; a trial never submitted is
    missing; unknown means squeue did not answer, so nobody can tell whether the trial is
    still queued.
    """
    latest: dict[str, dict[str, Any]] = {}
    for job in record.get("jobs", []):
        for tid in job["trial_ids"]:
            latest[tid] = job
    folders = trial_folders(out, record)
    todo = [tid for tid, d in folders.items() if not (d / RESULT).is_file()]
    slurm_ids = [latest[t]["job_id"] for t in todo if latest.get(t, {}).get("cluster") == "slurm"]
    live = squeue_states(slurm_ids) if slurm_ids else {}
    rows = []
    for t in record["trials"]:
        tid, d = t["trial_id"], folders[t["trial_id"]]
        job = latest.get(tid)
        row: dict[str, Any] = dict(trial_id=tid, step=t["config"].get("step"))
        row.update(seed=t["config"].get("seed"), path=str(d), job_id=job and job["job_id"])
        row.update(final_test_acc=None, error=None)
        sq = slurm_state(job, live, record["name"]) if job and live is not None else ""
        if (d / RESULT).is_file():
            try:
                result = read_result(d / RESULT)
                row.update(state=result["state"], final_test_acc=result["final_test_acc"])
                final = result["final_test_acc"]  # a tuning run's: its validation's
                row["collapsed"] = collapsed(
                    final if final is not None else result.get("final_val_acc")
                )
                if result["state"] in STOPPED:
                    row["error"] = f"{result['state']} after epoch {len(result['history'])}"
            except ValueError as e:
                row.update(
                    state="corrupt", path=str(d / RESULT), error=f"corrupted result.json: {e}"
                )
        elif sq in LIVE_STATES:
            row["state"] = LIVE_STATES[sq]
        elif job and job["cluster"] == "local" and local_alive(job["job_id"]):
            row["state"] = "running"
        elif error_line(d):
            row.update(state="failed", path=str(d / ERROR), error=error_line(d))
        elif job and job["cluster"] == "slurm" and live is None:
            row.update(state="unknown", error="squeue did not answer")
        elif job:
            how = f"ended {sq}" if sq else "ended"
            row.update(
                state="failed",
                error=f"job {job['job_id']} {how} without result.json (see {out / 'logs'})",
            )
        else:
            row.update(state="missing", error="no result.json")
        rows.append(row)
    return rows


def adopt_runs(root: Path) -> dict[str, Any]:
    """A folder of runs without sweep.json (or one run folder) as a record of its trials."""
    found = sorted({p.parent for n in (RESULT, ERROR, CONFIG) for p in root.glob(f"*/{n}")})
    if (root / RESULT).is_file():
        found.insert(0, root)
    trials = []
    for d in found:
        try:
            config = json.loads((d / CONFIG).read_text()) if (d / CONFIG).is_file() else {}
        except (OSError, ValueError):
            config = {}
        config = config if isinstance(config, dict) else {}
        trials.append(dict(trial_id=d.name, config=config, path=str(d)))
    return dict(name=root.name, trials=trials, jobs=[])


def dir_record(root: Path) -> dict[str, Any]:
    """The record of a sweep folder, or of any folder of runs; a one-line error otherwise."""
    if not root.exists():
        raise UserError(f"{root}: no such folder; give a sweep folder (mnist-dist sweep --out)")
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; give a sweep folder holding <trial>/result.json")
    record = load_record(root)
    if record is not None:
        return record
    record = adopt_runs(root)
    if not record["trials"]:
        raise UserError(f"{root} holds no runs: no sweep.json and no <trial>/result.json")
    return record


def counts_line(rows: list[dict[str, Any]]) -> str:
    c = Counter(r["state"] for r in rows)
    parts = [f"{c[s]} {s}" for s in STATES if c[s] or s in ("done", "failed")]
    return f"{len(rows)} trials: " + ", ".join(parts)
