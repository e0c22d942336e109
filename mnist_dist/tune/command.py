"""``mnist-dist tune``: start or continue a search, show its state, promote a trial.

    mnist-dist tune jobs/goal_tune.toml --cluster slurm --workers 8 --trials 200
    mnist-dist tune jobs/goal_tune.toml --cluster local --workers 2 --out DIR --wait
    mnist-dist tune DIR --status [--json]
    mnist-dist tune DIR --revalidate 5 [--val-seeds 3-7]
    mnist-dist tune DIR --promote 1 --name step8

Every call first fails and re-enqueues the trials of workers that died (``study.recover``),
then starts ``--workers`` more, which pull trials from the shared study until ``--trials``
(a total over every call) are used. Rerun the same command to continue a search; give the
folder alone to continue it with the tune file it started with.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import ArgumentParser, UserError, cli_errors
from ..fsio import write_text
from . import study as st
from .spec import TuneSpec, load_tune

CLUSTERS = ("slurm", "local")


def parse(argv: list[str] | None, prog: str):
    p = ArgumentParser(
        prog=prog,
        description="hyperparameter and architecture search "
        "(Optuna) over SLURM or local workers, on validation accuracy only",
    )
    p.add_argument("target", help="a tune file (jobs/*_tune.toml), or a tune folder to continue")
    p.add_argument("--cluster", default="slurm", choices=CLUSTERS, help="default: slurm")
    p.add_argument("--out", help="tune folder (default: runs/tunes/<name>)")
    p.add_argument("--trials", type=int, help="trials in all, over every call (default: the "
                   "file's `trials`, else 20)")  # fmt: skip
    p.add_argument("--workers", type=int, default=1, help="workers started by this call")
    p.add_argument("--wait", action="store_true", help="block until the workers end")
    p.add_argument("--storage", help="an RDB URL for the study (default: DIR/journal.log)")
    p.add_argument("--data-dir", help="folder holding MNIST/raw (default: $MNIST_DATA_DIR)")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between checks (--wait)")
    p.add_argument("--status", action="store_true", help="counts by state and the best so far")
    p.add_argument("--json", action="store_true", help="--status as JSON")
    p.add_argument("--revalidate", type=int, metavar="K", help="write the sweep that trains "
                   "the K best again on fresh validation seeds (the winner's curse)")  # fmt: skip
    p.add_argument("--val-seeds", default="3-7", metavar="LIST", help="--revalidate: its "
                   "seeds, apart from the search's (default 3-7)")  # fmt: skip
    p.add_argument("--promote", type=int, metavar="RANK", help="register the trial of this "
                   "rank (1: the best) as a step, with its test sweep in jobs/")  # fmt: skip
    p.add_argument("--name", help="--promote: the new step's name, e.g. step8")
    p.add_argument("--jobs", default="jobs", help="--promote, --revalidate: where the sweep "
                   "goes")  # fmt: skip
    p.add_argument("--test-seeds", default="100-119", metavar="LIST", help="--promote: the "
                   "test sweep's seeds, apart from the search's (default 100-119)")  # fmt: skip
    args = p.parse_args(argv)
    if args.trials is not None and args.trials < 1:
        raise UserError(f"--trials must be at least 1, got {args.trials}")
    if args.workers < 0:
        raise UserError(f"--workers must be at least 0, got {args.workers}")
    if not (math.isfinite(args.poll) and args.poll >= 0.1):
        raise UserError(f"--poll must be at least 0.1 seconds, got {args.poll}")
    if args.name is not None and args.promote is None:
        raise UserError("--name names a promoted step: add --promote RANK")
    return args


@cli_errors
def tune_main(argv: list[str] | None = None, prog: str = "mnist-dist tune") -> None:
    args = parse(argv, prog)
    target = Path(args.target)
    if args.status or args.promote is not None or args.revalidate is not None:
        if not (target / st.TUNE).is_file():
            raise UserError(f"{target} is not a tune folder (no {st.TUNE}); give the --out "
                            "of `mnist-dist tune`")  # fmt: skip
        if args.revalidate is not None:
            from ..training.flags import parse_seeds
            from .promote import revalidate

            seeds = parse_seeds(args.val_seeds, "--val-seeds")
            return revalidate(target, args.revalidate, Path(args.jobs), seeds)
        if args.promote is not None:
            from ..training.flags import parse_seeds
            from .promote import promote

            seeds = parse_seeds(args.test_seeds, "--test-seeds")
            return promote(target, args.promote, args.name, Path(args.jobs), seeds)
        print_status(target, args.json)
        return None
    out, spec = prepare(target, args)
    start(out, spec, args)


def prepare(target: Path, args) -> tuple[Path, TuneSpec]:
    """The tune folder and its spec: new from a file, or the folder's own to continue."""
    if target.is_dir():
        if not (target / st.TUNE).is_file():
            raise UserError(f"{target} is a folder but not a tune folder; give a tune file")
        out = target
        if args.out and Path(args.out).resolve() != out.resolve():
            raise UserError("give a tune folder or --out, not both")
        return out, load_tune(out / st.SPEC)
    spec = load_tune(target)
    out = Path(args.out or Path("runs") / "tunes" / spec.name)
    text = target.read_text()
    if (out / st.SPEC).is_file():
        if (out / st.SPEC).read_text() != text:
            raise UserError(f"{out} holds another search (its {st.SPEC} differs from {target}); "
                            f"choose a new --out, or give {out} alone to continue it")  # fmt: skip
        return out, spec
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out {out}: {e.strerror}; choose another folder") from e
    write_text(out / st.SPEC, text)
    st.write_record(out, dict(name=spec.name, file=str(target), storage=args.storage,
                              trials=spec.trials, workers=[]))  # fmt: skip
    return out, spec


def start(out: Path, spec: TuneSpec, args) -> None:
    record = st.read_record(out)
    if args.storage and args.storage != record.get("storage"):
        raise UserError(f"{out} keeps its study in {record.get('storage') or st.JOURNAL}; "
                        "drop --storage or choose a new --out")  # fmt: skip
    total = args.trials or record["trials"]
    check_cluster(args.cluster, spec)
    study, storage = st.load_study(out, spec, record)
    with st.ask_lock(out):
        for number in st.recover(out, study, storage):
            print(f"trial {number}: its worker is gone; enqueued again, to resume")
        if started := st.enqueue_start(study, spec):
            print(f"{started} [[start]] trials enqueued: the first trials run them")
    c = st.counts(study)
    if c["used"] >= total and not c["waiting"]:
        print(f"{out}: {c['used']} of {total} trials used; nothing to start "
              "(raise --trials to search further)")  # fmt: skip
        print_status(out)
        return
    data_dir = args.data_dir or os.environ.get("MNIST_DATA_DIR")
    launched = launch(args.cluster, out, spec, args.workers, total, data_dir, record)
    with st.ask_lock(out):  # another call may have added its workers meanwhile
        record = st.read_record(out)
        record.update(trials=total, workers=record.get("workers", []) + launched)
        st.write_record(out, record)
    print(f"{out}: {len(launched)} workers started ({args.cluster}), {c['used']} of {total} "
          f"trials used; follow with `mnist-dist tune {out} --status`")  # fmt: skip
    if args.wait:
        wait(out, launched, args.poll)
        print_status(out)


def check_cluster(cluster: str, spec: TuneSpec) -> None:
    if cluster == "slurm":
        from ..sweeps.slurm import check_cluster as check_slurm

        check_slurm("slurm", spec.resources, [])


def launch(cluster, out, spec, workers, total, data_dir, record) -> list[dict[str, Any]]:
    """Start ``workers`` workers; what tune.json records of each."""
    (out / st.LOGS).mkdir(exist_ok=True)
    first = len(record.get("workers", []))  # worker k samples with seed + k, over every call
    if cluster == "local":
        return [local_worker(out, first + k, workers, total, data_dir) for k in range(workers)]
    from ..sweeps.slurm import make_executor, submit_array
    from .worker import Worker

    res = spec.resources
    executor = make_executor("slurm", out, f"tune-{spec.name}", res)
    jobs = submit_array(executor, [Worker(str(out), first + k, total, res.cpus_per_task,
                                          data_dir) for k in range(workers)])  # fmt: skip
    return [dict(index=first + k, job=j.job_id, cluster="slurm") for k, j in enumerate(jobs)]


def local_worker(out: Path, index: int, workers: int, total: int, data_dir) -> dict[str, Any]:
    """One worker process on this machine, on its share of the cores (oversubscribed
    trainers run several times slower), in a session of its own: it outlives this call."""
    cores = sorted(os.sched_getaffinity(0))
    share = max(1, len(cores) // max(1, workers))
    mine = cores[(index % workers) * share :][:share] if share * workers <= len(cores) else cores
    cmd = [sys.executable, "-m", "mnist_dist.tune.worker", str(out), "--index", str(index),
           "--trials", str(total), "--threads", str(share)]  # fmt: skip
    if data_dir:
        cmd += ["--data-dir", str(data_dir)]
    log = open(out / st.LOGS / f"worker-{index}.log", "ab")  # noqa: SIM115 (the child's)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: os.sched_setaffinity(0, mine))  # fmt: skip
    log.close()
    return dict(index=index, job=f"pid {proc.pid}", pid=proc.pid, cluster="local")


def alive(worker: dict[str, Any]) -> bool:
    if worker["cluster"] == "local":
        try:
            os.waitpid(worker["pid"], os.WNOHANG)  # reap it if it is our child
        except ChildProcessError:
            pass
        cmdline = Path(f"/proc/{worker['pid']}/cmdline")
        return cmdline.is_file() and b"mnist_dist.tune.worker" in cmdline.read_bytes()
    return not st.job_gone(str(worker["job"]))


def wait(out: Path, workers: list[dict[str, Any]], poll: float) -> None:
    last = 0.0
    while any(alive(w) for w in workers):
        if time.monotonic() - last > 60:  # a line a minute: SLURM logs, nohup
            last = time.monotonic()
            print(status_line(out), flush=True)
        time.sleep(poll)


# ---- --status ---------------------------------------------------------------------------


def summary(out: Path) -> dict[str, Any]:
    """Counts by state and the best complete trial: what --status and the report show."""
    record = st.read_record(out)
    spec = load_tune(out / st.SPEC)
    study, _ = st.load_study(out, spec, record)
    c = st.counts(study, out)
    best = st.best_trials(study, 1)
    return dict(
        name=spec.name, folder=str(out), trials=record["trials"], used=c["used"],
        counts={k: c[k] for k in ("complete", "pruned", "running", "fail", "stalled",
                                  "waiting", st.OVER_BUDGET, "over_time", st.LOST)},
        best=st.trial_row(best[0]) if best else None,
    )  # fmt: skip


def status_line(out: Path) -> str:
    s = summary(out)
    c = s["counts"]
    line = (f"{s['name']}: {s['used']} of {s['trials']} trials used: {c['complete']} complete, "
            f"{c['pruned']} pruned, {c['running']} running, {c['fail']} failed, "
            f"{c[st.OVER_BUDGET]} over budget")  # fmt: skip
    if c["over_time"]:
        line += f", {c['over_time']} over max_seconds"
    if c["waiting"] or c[st.LOST]:
        line += f" ({c[st.LOST]} lost with their worker, {c['waiting']} enqueued to run)"
    if c["stalled"]:
        line += (f"; {c['stalled']} running with no live worker: the next `mnist-dist tune` "
                 "call resumes them")  # fmt: skip
    return line


def print_status(out: Path, as_json: bool = False) -> bool:
    """Print the tune's state; whether it is finished (--trials used, none in flight)."""
    s = summary(out)
    c = s["counts"]
    finished = s["used"] >= s["trials"] and not (c["running"] or c["stalled"] or c["waiting"])
    if as_json:
        print(json.dumps(dict(s, finished=finished), indent=2))
        return finished
    print(status_line(out))
    b = s["best"]
    if b:
        std = f" +- {b['std']:.3f}" if b["std"] is not None else ""
        print(
            f"best so far: trial {b['number']}, {b['value']:.3f}{std}% mean validation "
            f"accuracy (n={len(b['val_accs'])}), {b['params']:,} params: {b['label']}"
        )
    else:
        print("best so far: none complete yet")
    return finished
