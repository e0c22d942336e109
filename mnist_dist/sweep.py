"""Submit a sweep file's grid as job arrays, and show the state of a sweep's trials.

    mnist-dist sweep jobs/smoke.toml --cluster slurm --out /tmp/s --wait
    mnist-dist sweep jobs/seed_sweep.toml --dry-run
    mnist-dist status /tmp/s [--json]

The sweep folder ``DIR`` (default ``runs/sweeps/<name>``) holds ``sweep.json`` (the sweep
file, its expanded trials with resolved configs, and every job submitted), one folder per
trial ``DIR/<trial_id>/`` (``config.json``, ``checkpoint.pt``, ``result.json``, and
``error.txt`` when the trial raised) and submitit's logs in ``DIR/logs/<job id>/``.
Rerunning a sweep skips trials that are done or still queued and resubmits the others.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import ArgumentParser, UserError, cli_errors, write_json_atomic
from .slurm import (
    CLUSTERS,
    LIVE_STATES,
    Trial,
    check_cluster,
    error_line,
    make_executor,
    squeue_states,
    submit_array,
)
from .sweepfile import MAX_TRIALS, SweepSpec, load_sweep

STATES = ("done", "running", "pending", "failed", "missing", "unknown")
RECORD = "sweep.json"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_record(out: Path) -> dict[str, Any] | None:
    path = out / RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (ValueError, OSError):
        return False


def trial_states(out: Path, record: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per trial: state, latest job, final accuracy or the error's last line.

    The trial folder decides done (result.json) and failed (error.txt); the scheduler
    decides pending and running. A job that ended without either counts as failed.
    """
    latest: dict[str, dict[str, Any]] = {}
    for job in record.get("jobs", []):
        for tid in job["trial_ids"]:
            latest[tid] = job
    todo = [
        t["trial_id"]
        for t in record["trials"]
        if not (out / t["trial_id"] / "result.json").is_file()
    ]
    slurm_ids = [latest[t]["job_id"] for t in todo if latest.get(t, {}).get("cluster") == "slurm"]
    live = squeue_states(slurm_ids) if slurm_ids else {}
    rows = []
    for t in record["trials"]:
        tid, d = t["trial_id"], out / t["trial_id"]
        job = latest.get(tid)
        row: dict[str, Any] = dict(trial_id=tid, step=t["config"]["step"], seed=t["config"]["seed"])
        row.update(job_id=job["job_id"] if job else None, final_test_acc=None, error=None)
        sq = live.get(job["job_id"]) if job and live is not None else None
        if (d / "result.json").is_file():
            row["state"] = "done"
            row["final_test_acc"] = json.loads((d / "result.json").read_text())["final_test_acc"]
        elif sq in LIVE_STATES:
            row["state"] = LIVE_STATES[sq]
        elif job and job["cluster"] == "local" and _alive(job["job_id"]):
            row["state"] = "running"
        elif error_line(d):
            row.update(state="failed", error=error_line(d))
        elif job and job["cluster"] == "slurm" and live is None:
            row.update(state="unknown", error="squeue did not answer")
        elif job:
            how = f"ended {sq}" if sq else "ended"
            row.update(
                state="failed",
                error=f"job {job['job_id']} {how} without result.json (see {out / 'logs'})",
            )
        else:
            row["state"] = "missing"
        rows.append(row)
    return rows


def counts_line(rows: list[dict[str, Any]]) -> str:
    c = Counter(r["state"] for r in rows)
    parts = [f"{c[s]} {s}" for s in STATES if c[s] or s in ("done", "failed")]
    return f"{len(rows)} trials: " + ", ".join(parts)


def print_plan(spec: SweepSpec, trials: list[dict[str, Any]], actions: dict[str, str]) -> None:
    """The trial table: id, step, seed, every other key that varies, and what happens."""
    keys = [
        k
        for k in trials[0]["config"]
        if k not in ("step", "seed") and len({json.dumps(t["config"][k]) for t in trials}) > 1
    ]
    head = ["trial", "step", "seed", *keys, "action"]
    body = [
        [t["trial_id"], t["config"]["step"], str(t["config"]["seed"])]
        + [str(t["config"][k]) for k in keys]
        + [actions[t["trial_id"]]]
        for t in trials
    ]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    for r in [head, *body]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def build_sweep_parser(prog: str) -> argparse.ArgumentParser:
    p = ArgumentParser(prog=prog, description="Submit a sweep file's trials as job arrays.")
    p.add_argument("file", help="sweep file, e.g. jobs/smoke.toml")
    p.add_argument("--cluster", default="slurm", choices=CLUSTERS, help="default: slurm")
    p.add_argument("--out", help="sweep folder (default: runs/sweeps/<name>)")
    p.add_argument("--data-dir", help="folder holding MNIST/raw (default: $MNIST_DATA_DIR)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, submit nothing")
    p.add_argument("--wait", action="store_true", help="block until every trial ends")
    p.add_argument("--yes", action="store_true", help=f"allow more than {MAX_TRIALS:,} trials")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between checks (--wait)")
    return p


@cli_errors
def sweep_main(argv: list[str] | None = None, prog: str = "mnist-dist sweep") -> None:
    """mnist-dist sweep jobs/smoke.toml --cluster slurm --out /tmp/s --wait"""
    args = build_sweep_parser(prog).parse_args(argv)
    spec = load_sweep(args.file)
    if spec.size() > MAX_TRIALS and not args.yes:
        raise UserError(
            f"{args.file} expands to {spec.size():,} trials (over {MAX_TRIALS:,}); "
            "pass --yes to submit them anyway"
        )
    configs = spec.expand()
    out = Path(args.out or Path("runs") / "sweeps" / spec.name)
    record = load_record(out)
    if record and record["name"] != spec.name:
        raise UserError(
            f"{out} holds sweep {record['name']!r}, not {spec.name!r}; use another --out"
        )
    if not args.dry_run:
        check_cluster(args.cluster, spec.resources)
    trials = [dict(trial_id=c.trial_id(), config=c.to_dict()) for c in configs]
    record = dict(
        name=spec.name,
        file=spec.file,
        description=spec.description,
        cluster=args.cluster,
        updated=now(),
        resources=vars(spec.resources),
        trials=trials,
        jobs=(record or {}).get("jobs", []),
    )
    rows = {r["trial_id"]: r for r in trial_states(out, record)}
    skip = {"done": "skip (done)", "pending": "skip (queued)", "running": "skip (running)"}
    actions = {t: skip.get(r["state"], "submit") for t, r in rows.items()}
    print(f"sweep {spec.name}: {len(trials)} trials -> {out}  (cluster {args.cluster})")
    print_plan(spec, trials, actions)
    todo = [t for t in trials if actions[t["trial_id"]] == "submit"]
    if args.dry_run:
        print(f"dry run: would submit {len(todo)} of {len(trials)} trials; nothing submitted")
        return
    write_json_atomic(out / RECORD, record)
    if not todo:
        print("nothing to submit: every trial is done or queued")
    else:
        res = spec.resources
        jobs = [
            Trial(
                trial_id=t["trial_id"],
                config=t["config"],
                out=str((out / t["trial_id"]).resolve()),
                sweep=spec.name,
                data_dir=args.data_dir,
                wandb=spec.wandb.mode,
                wandb_project=spec.wandb.project,
                cpu=res.gpus_per_node == 0,
                cpus_per_task=res.cpus_per_task,
            )
            for t in todo
        ]
        executor = make_executor(args.cluster, out.resolve(), spec.name, res)
        if args.cluster == "slurm":
            for job, trial in zip(submit_array(executor, jobs), jobs, strict=True):
                add_job(out, record, job.job_id, trial, "slurm")
            array_id = record["jobs"][-1]["job_id"].split("_")[0]
            print(f"submitted {len(jobs)} trials as job array {array_id}")
        else:  # local and debug run here, so they always wait
            run_here(out, record, executor, jobs, args.cluster, res.array_parallelism, args.poll)
    if args.wait and args.cluster == "slurm":
        wait(out, record, args.poll)
    if args.wait or args.cluster != "slurm":
        rows_end = trial_states(out, record)
        print(counts_line(rows_end))
        failed = [r for r in rows_end if r["state"] != "done"]
        for r in failed:
            print(f"  {r['trial_id']}: {r['state']}: {r['error'] or ''}".rstrip(": "))
        if failed:
            sys.exit(1)


def add_job(out: Path, record: dict[str, Any], job_id: str, trial: Trial, cluster: str) -> None:
    record["jobs"].append(
        dict(job_id=str(job_id), trial_ids=[trial.trial_id], cluster=cluster, submitted=now())
    )
    record["updated"] = now()
    write_json_atomic(out / RECORD, record)


def run_here(out, record, executor, trials, cluster, parallelism, poll) -> None:
    """Local: at most ``parallelism`` job processes at once. Debug: one by one, in here."""
    if cluster == "debug":
        for i, trial in enumerate(trials, 1):
            job = executor.submit(trial)
            add_job(out, record, job.job_id, trial, cluster)
            err = job.exception()  # runs it; unlike result(), never opens a debugger
            print(
                f"[{i}/{len(trials)}] {trial.trial_id}: {'failed: ' + str(err) if err else 'done'}"
            )
        return
    queue, running = list(trials), {}
    last = ""
    while queue or running:
        while queue and len(running) < parallelism:
            trial = queue.pop(0)
            running[trial.trial_id] = job = executor.submit(trial)
            add_job(out, record, job.job_id, trial, cluster)
        running = {t: j for t, j in running.items() if not j.done()}
        last = progress(out, record, last)
        if queue or running:
            time.sleep(poll)


def progress(out: Path, record: dict[str, Any], last: str) -> str:
    """Print the counts when they change; returns the line printed."""
    line = counts_line(trial_states(out, record))
    if line != last:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)
    return line


def wait(out: Path, record: dict[str, Any], poll: float) -> None:
    """Block until no trial of this sweep is pending or running on SLURM."""
    last = ""
    while True:
        last = progress(out, record, last)
        rows = trial_states(out, record)
        if not any(r["state"] in ("pending", "running", "unknown") for r in rows):
            return
        time.sleep(poll)


@cli_errors
def status_main(argv: list[str] | None = None, prog: str = "mnist-dist status") -> None:
    """mnist-dist status /tmp/s --json"""
    p = ArgumentParser(prog=prog, description="State of each trial in a sweep folder, and counts.")
    p.add_argument("dir", help="sweep folder (holds sweep.json)")
    p.add_argument("--json", action="store_true", help="print JSON: counts and trials")
    args = p.parse_args(argv)
    out = Path(args.dir)
    record = load_record(out)
    if record is None:
        raise UserError(f"{out} is not a sweep folder (no {RECORD}); run `mnist-dist sweep` first")
    rows = trial_states(out, record)
    counts = Counter(r["state"] for r in rows)
    if args.json:
        summary = dict(name=record["name"], dir=str(out), total=len(rows))
        print(
            json.dumps(dict(summary, counts={s: counts[s] for s in STATES}, trials=rows), indent=2)
        )
        return
    print(f"sweep {record['name']} in {out}")
    for r in rows:
        acc = f"{r['final_test_acc']:.2f}%" if r["final_test_acc"] is not None else ""
        detail = acc or r["error"] or ""
        print(f"  {r['trial_id']:<28} {r['state']:<8} {r['job_id'] or '-':<12} {detail}".rstrip())
    print(counts_line(rows))


main = sweep_main
