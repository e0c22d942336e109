"""Submit a sweep file's grid as job arrays, and show the state of a sweep's trials.

    mnist-dist sweep jobs/smoke.toml --cluster slurm --out /tmp/s --wait
    mnist-dist sweep jobs/seed_sweep.toml --dry-run
    mnist-dist status /tmp/s [--json]

The sweep folder ``DIR`` (default ``runs/sweeps/<name>``) holds ``sweep.json`` (the sweep
file, its expanded trials with resolved configs, and every job submitted), one folder per
trial ``DIR/<trial_id>/`` (``config.json``, ``checkpoint.pt``, ``result.json``, and
``error.txt`` when the trial raised) and submitit's logs in ``DIR/logs/<job id>/``.
Rerunning a sweep skips trials that are done or still queued and resubmits the others.

``--set key=value`` overrides the file (see ``sweeps.spec``); the overrides are recorded in
``sweep.json``. A rerun over the same folder with other overrides adds its trials to the
record: this command's trials come first, then those of earlier runs that it does not list,
so ``status`` and ``report`` still see every trial the folder holds.
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..errors import ArgumentParser, UserError, cli_errors
from ..rundir import STOPPED
from .slurm import CLUSTERS, Trial, check_cluster, executor_params, make_executor, submit_array
from .spec import MAX_TRIALS, SweepSpec, load_sweep
from .state import (
    RECORD,
    counts_line,
    load_record,
    record_lock,
    token_jobs,
    trial_folders,
    trial_states,
    write_record,
)

UNANSWERED_S = 300  # --wait gives up after squeue has not answered for this long (seconds)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def print_plan(spec: SweepSpec, trials: list[dict[str, Any]], actions: dict[str, str]) -> None:
    """The trial table: id, step, seed, the keys [defaults] sets (after --set), every other
    key that varies, and what happens."""
    keys = [
        k
        for k in trials[0]["config"]
        if k not in ("step", "seed")
        and (k in spec.defaults or len({json.dumps(t["config"][k]) for t in trials}) > 1)
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


def print_submission(spec: SweepSpec, cluster: str) -> None:
    """What each job array is submitted with: submitit's parameters (on SLURM, its #SBATCH
    lines) and the shell lines run before srun."""
    params = executor_params(spec.name, spec.resources)
    setup = params.pop("slurm_setup", [])
    print(f"submitit parameters (--cluster {cluster}; slurm_* apply on SLURM only):")
    for key, value in params.items():
        print(f"  {key} = {json.dumps(value)}")
    print("setup lines before srun:" if setup else "setup lines before srun: none")
    for line in setup:
        print(f"  {line}")


def build_sweep_parser(prog: str) -> argparse.ArgumentParser:
    p = ArgumentParser(prog=prog, description="Submit a sweep file's trials as job arrays.")
    p.add_argument("file", help="sweep file, e.g. jobs/smoke.toml")
    p.add_argument("--cluster", default="slurm", choices=CLUSTERS, help="default: slurm")
    p.add_argument("--out", help="sweep folder (default: runs/sweeps/<name>)")
    p.add_argument("--data-dir", help="folder holding MNIST/raw (default: $MNIST_DATA_DIR)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, submit nothing")
    p.add_argument("--wait", action="store_true", help="block until every trial ends")
    p.add_argument(
        "--report",
        action="store_true",
        help="when the trials end: the report with Welch comparisons, and its report.md and "
        "plots/ in the sweep folder (needs --wait on SLURM)",
    )
    p.add_argument("--yes", action="store_true", help=f"allow more than {MAX_TRIALS:,} trials")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between checks (--wait)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the file (repeatable): epochs=2 (= defaults.epochs), 'grid.seed=[0,1]', "
        "resources.mem_gb=8; values are TOML",
    )
    return p


@cli_errors
def sweep_main(argv: list[str] | None = None, prog: str = "mnist-dist sweep") -> None:
    """mnist-dist sweep jobs/smoke.toml --cluster slurm --out /tmp/s --wait"""
    args = build_sweep_parser(prog).parse_args(argv)
    if not 0.1 <= args.poll < math.inf:  # 0 would busy-loop on squeue
        raise UserError(f"--poll must be at least 0.1 seconds, got {args.poll}")
    if args.report and args.cluster == "slurm" and not args.wait:
        raise UserError("--report reads the finished trials: add --wait on SLURM")
    spec = load_sweep(args.file, args.overrides)
    if spec.size() > MAX_TRIALS and not args.yes:
        raise UserError(
            f"{args.file} expands to {spec.size():,} trials (over {MAX_TRIALS:,}); "
            "pass --yes to submit them anyway"
        )
    configs = spec.expand()
    out = Path(args.out or Path("runs") / "sweeps" / spec.name)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a sweep folder; name a folder")
    old = load_record(out)
    if old and old["name"] != spec.name:
        raise UserError(f"{out} holds sweep {old['name']!r}, not {spec.name!r}; use another --out")
    if not args.dry_run:
        check_cluster(args.cluster, spec.resources, configs)
    trials = [
        dict(trial_id=c.trial_id(), config=c.to_dict(), overrides=args.overrides) for c in configs
    ]
    if args.dry_run:
        record = dict(name=spec.name, trials=trials, jobs=(old or {}).get("jobs", []))
        todo = plan(spec, out, record, args.cluster, args.overrides)
        print_submission(spec, args.cluster)
        print(f"dry run: would submit {len(todo)} of {len(trials)} trials; nothing submitted")
        return
    with record_lock(out):  # two reruns of one folder never submit the same trial twice
        old = load_record(out) or {}
        if args.cluster == "slurm":  # local and debug jobs ran here: no intent outlives them
            adopt_interrupted(old, spec.name)
        record = dict(
            name=spec.name,
            file=spec.file,
            description=spec.description,
            overrides=args.overrides,
            cluster=args.cluster,
            updated=now(),
            resources=vars(spec.resources),
            trials=trials + earlier_trials(old, trials),
            jobs=old.get("jobs", []),
        )
        if spec.resources.pack_seeds > 1:  # recorded: a rerun finds the same packs
            record["packs"] = make_packs(trials, spec.resources.pack_seeds)
        todo = plan(spec, out, dict(record, trials=trials), args.cluster, args.overrides)
        if len(record["trials"]) > len(trials):
            kept = len(record["trials"]) - len(trials)
            print(f"{kept} trial(s) of earlier runs over {out} stay in its {RECORD}")
        write_record(out, record)
        if todo:
            submit(spec, out, record, todo, configs, args)
        else:
            print("nothing to submit: every trial is done or queued")
    mine = dict(record, trials=trials)  # what this command waits for and reports on
    if args.wait and args.cluster == "slurm":
        wait(out, mine, args.poll)
    if args.wait or args.cluster != "slurm":
        rows_end = trial_states(out, mine)
        print(counts_line(rows_end))
        failed = [r for r in rows_end if r["state"] != "done"]
        for r in failed:
            print(f"  {r['trial_id']}: {r['state']}: {r['error'] or ''}".rstrip(": "))
        if args.report and len(failed) < len(rows_end):
            from ..report.report import report_main

            print()
            report_main([str(out), "--compare", "--markdown", str(out / "report.md"),
                         "--plots", str(out / "plots")])  # fmt: skip
            print(f"\nreport: {out / 'report.md'}, plots: {out / 'plots'}/")
        if failed:
            sys.exit(1)


def earlier_trials(old: dict[str, Any], trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The record's trials from earlier runs (other overrides) that this run does not list."""
    listed = {t["trial_id"] for t in trials}
    return [t for t in old.get("trials", []) if t["trial_id"] not in listed]


def plan(
    spec: SweepSpec, out: Path, record: dict[str, Any], cluster: str, overrides: list[str]
) -> list[dict]:
    """Print the trial table and return the trials to submit: all but done and queued.

    A trial whose SLURM state is unknown (squeue did not answer) may still be queued:
    submitting it again could run it twice, so that stops the command instead.
    """
    rows = {r["trial_id"]: r for r in trial_states(out, record)}
    skip = {"done": "skip (done)", "pending": "skip (queued)", "running": "skip (running)"}
    skip |= {state: f"skip ({state})" for state in STOPPED}
    actions = {t: skip.get(r["state"], "submit") for t, r in rows.items()}
    unknown = [t for t, r in rows.items() if r["state"] == "unknown"]
    if unknown:
        raise UserError(
            f"squeue did not answer, so {len(unknown)} submitted trial(s) may still be queued; "
            "nothing submitted: rerun when slurmctld answers (`mnist-dist status` shows it)"
        )
    trials = record["trials"]
    print(f"sweep {spec.name}: {len(trials)} trials -> {out}  (cluster {cluster})")
    if overrides:
        print(f"overrides: {' '.join(overrides)}")
    print_plan(spec, trials, actions)
    return [t for t in trials if actions[t["trial_id"]] == "submit"]


def make_packs(trials: list[dict[str, Any]], n: int) -> list[list[str]]:
    """Seeds of one config in jobs of up to n: a config's trials sorted by seed, in chunks.
    Deterministic, so a rerun forms the same packs; n = 1: one trial per job."""
    by_config: dict[str, list[dict[str, Any]]] = {}
    for t in trials:
        key = TrainConfig.from_dict(t["config"]).config_hash() if n > 1 else t["trial_id"]
        by_config.setdefault(key, []).append(t)
    packs = []
    for group in by_config.values():
        ids = [t["trial_id"] for t in sorted(group, key=lambda t: t["config"]["seed"])]
        packs += [ids[i : i + n] for i in range(0, len(ids), n)]
    return packs


def submit(spec, out: Path, record, todo, configs, args) -> None:
    """Submit the todo trials: one SLURM job array, or processes here (local, debug).

    With ``pack_seeds`` N > 1, a job trains a pack of up to N seeds of one config; a pack
    with any trial to submit is submitted whole, and its finished seeds are kept (resume).
    """
    res = spec.resources
    by_id = {c.trial_id(): c for c in configs}
    folders = trial_folders(out, record)
    submit_ids = [t["trial_id"] for t in todo]  # in plan order
    if record.get("packs"):  # the recorded packs, less trials that are done or queued
        packs = [[i for i in p if i in submit_ids] for p in record["packs"]]
        packs = [p for p in packs if p]
    else:
        packs = [[i] for i in submit_ids]
    jobs = [
        Trial(
            trial_ids=ids,
            configs=[by_id[i].to_dict() for i in ids],
            out=str((folders[ids[0]] if len(ids) == 1 else out).resolve()),
            wandb_group=f"{spec.name}/{by_id[ids[0]].label()}",
            data_dir=args.data_dir,
            wandb=spec.wandb.mode,
            wandb_project=spec.wandb.project,
            cpu=res.gpus_per_node == 0,
            cpus_per_task=res.cpus_per_task,
        )
        for ids in packs
    ]
    token = secrets.token_hex(6)  # names our jobs to squeue: job numbers are reused
    executor = make_executor(args.cluster, out.resolve(), spec.name, res, token)
    if args.cluster == "slurm":
        # The intent goes on disk before sbatch: killed between sbatch and the record, the
        # next run finds these jobs by their token (adopt_interrupted) instead of
        # submitting the trials a second time.
        intent = dict(token=token, trial_ids=[list(t.trial_ids) for t in jobs], written=now())
        record["intents"] = [intent]
        write_record(out, record)
        try:
            submitted = submit_array(executor, jobs)
        except UserError:  # sbatch refused: nothing was queued
            record.pop("intents")
            write_record(out, record)
            raise
        for job, trial in zip(submitted, jobs, strict=True):
            add_job(record, job.job_id, trial, "slurm", token)
        record.pop("intents")
        write_record(out, record)  # once per array
        array_id = submitted[0].job_id.split("_")[0]
        print(f"submitted {len(todo)} trials in {len(jobs)} jobs as job array {array_id}")
    else:  # local and debug run here, so they always wait
        run_here(out, record, executor, jobs, args.cluster, res.array_parallelism, args.poll)


def adopt_interrupted(record: dict[str, Any], name: str) -> None:
    """A submission cut short between sbatch and its record left its intent: the jobs that
    squeue lists with its token become the record's (array index i: the intent's i-th
    job), so the plan sees those trials as queued; the intent is then settled."""
    for intent in record.pop("intents", []):
        found = token_jobs(name, intent["token"])
        if found is None:
            raise UserError(
                "squeue did not answer, so the jobs of an interrupted submission "
                f"({intent['written']}) may be queued; nothing submitted: rerun when "
                "slurmctld answers"
            )
        for index, job_id in sorted(found.items()):
            record.setdefault("jobs", []).append(
                dict(job_id=job_id, trial_ids=intent["trial_ids"][index], cluster="slurm",
                     submitted=intent["written"], token=intent["token"])
            )  # fmt: skip
        print(f"an interrupted submission ({intent['written']}): {len(found)} of its "
              f"{len(intent['trial_ids'])} job(s) found in squeue, now in {RECORD}")  # fmt: skip


def add_job(record: dict[str, Any], job_id: str, trial: Trial, cluster: str, token: str) -> None:
    record["jobs"].append(
        dict(
            job_id=str(job_id),
            trial_ids=list(trial.trial_ids),
            cluster=cluster,
            submitted=now(),
            token=token,
        )
    )
    record["updated"] = now()


def run_here(out, record, executor, trials, cluster, parallelism, poll) -> None:
    """Local: at most ``parallelism`` job processes at once. Debug: one by one, in here."""
    if cluster == "debug":
        for i, trial in enumerate(trials, 1):
            job = executor.submit(trial)
            add_job(record, job.job_id, trial, cluster, "")
            write_record(out, record)
            err = job.exception()  # runs it; unlike result(), never opens a debugger
            what = ", ".join(trial.trial_ids)
            print(f"[{i}/{len(trials)}] {what}: {'failed: ' + str(err) if err else 'done'}")
        return
    queue, running = list(trials), {}
    last = ""
    while queue or running:
        while queue and len(running) < parallelism:
            trial = queue.pop(0)
            running[trial.trial_ids[0]] = job = executor.submit(trial)
            add_job(record, job.job_id, trial, cluster, "")
            write_record(out, record)
        running = {t: j for t, j in running.items() if not j.done()}
        last = progress(trial_states(out, record), last)
        if queue or running:
            time.sleep(poll)


def progress(rows: list[dict[str, Any]], last: str) -> str:
    """Print the counts when they change; returns the line printed."""
    line = counts_line(rows)
    if line != last:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)
    return line


def wait(out: Path, record: dict[str, Any], poll: float, patience_s: float = UNANSWERED_S) -> None:
    """Block until no trial of this sweep is pending or running on SLURM.

    When squeue stops answering, wait at most ``patience_s`` for it to come back, then stop
    with a one-line error: the trials keep running, and ``mnist-dist status`` still works.
    """
    last, silent_since = "", None
    while True:
        rows = trial_states(out, record)
        last = progress(rows, last)
        if any(r["state"] == "unknown" for r in rows):
            silent_since = silent_since or time.monotonic()
            if time.monotonic() - silent_since > patience_s:
                raise UserError(
                    f"squeue has not answered for {patience_s:.0f} s; stopped waiting. The "
                    f"trials keep running: see `mnist-dist status {out}`"
                )
        else:
            silent_since = None
            if not any(r["state"] in ("pending", "running") for r in rows):
                return
        time.sleep(poll)


main = sweep_main
