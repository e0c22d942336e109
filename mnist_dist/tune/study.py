"""The tune folder and its Optuna study: storage, sampler, pruner, trial locks, recovery.

A tune folder ``DIR`` holds ``tune.toml`` (the tune file, as first given: what every
worker reads), ``tune.json`` (where it came from, the storage, ``--trials`` and every
worker launched), ``journal.log`` (the Optuna study: a journal file, shared by workers
on any node over the filesystem, no database server; ``--storage`` takes an RDB URL
instead), ``runs/<trial id>/`` (one ordinary run folder per seed of a trial, the ids
``mnist-dist train`` gives the same config; a pack's resume state in ``runs/.packs/``),
``locks/`` and ``logs/``.

Journal storage has no heartbeat: a worker that dies leaves its trial RUNNING for ever.
Each worker holds an OS lock on ``locks/trial-<number>`` while it trains that trial, so
``recover`` (at every ``tune`` call and before every ask) can tell a dead worker's trial
from a live one: the lock is free, or SLURM no longer knows the worker's job. It marks that
trial failed and lost, and enqueues its parameters again: the next worker resumes its runs
from their checkpoints. ``ask`` happens under ``ask.lock``, so that ``--trials`` is an
exact total over every call and worker and no trial is seen between ask and lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import statistics
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..fsio import write_json
from .spec import TuneSpec

TUNE, SPEC, JOURNAL = "tune.json", "tune.toml", "journal.log"
RUNS, LOCKS, LOGS = "runs", "locks", "logs"
LOST = "lost"  # user attr of a trial whose worker died; its parameters were enqueued again
RESUMES = "resumes"  # user attr of the enqueued trial: the number of the lost one
OVER_BUDGET = "over_budget"  # user attr: params above max_params, never trained
OVER_SECONDS = "over_seconds"  # user attr: training seconds - max_seconds (> 0: infeasible)


def open_storage(tune_dir: Path, url: str | None = None):
    """The study's storage: a journal file in the folder, or an RDB URL (``--storage``)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    if url:
        try:
            return optuna.storages.RDBStorage(url)
        except Exception as e:  # sqlalchemy raises its own types for a bad URL or server
            raise UserError(f"--storage {url}: {type(e).__name__}: {str(e).splitlines()[0]}; "
                            "give an RDB URL Optuna can open") from None  # fmt: skip
    # open(O_EXCL) locking: it works on NFS, where a symlink lock may not
    path = str(tune_dir / JOURNAL)
    return optuna.storages.JournalStorage(JournalFileBackend(path, JournalFileOpenLock(path)))


def sampler(spec: TuneSpec, worker: int):
    """The spec's sampler, seeded with the tune seed plus the worker's index. TPE reads the
    parameter budget as a constraint: an over-budget trial is infeasible, ranked below all."""
    import optuna

    seed = spec.sampler.seed + worker
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if spec.sampler.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # Optuna 5 reads a trial's own constraints (Trial.set_constraint; the worker sets
    # "params" = params - max_params); Optuna 4 asks a function after the trial.
    own = hasattr(optuna.trial.Trial, "set_constraint")
    return optuna.samplers.TPESampler(
        seed=seed,
        n_startup_trials=spec.sampler.startup_trials,
        multivariate=spec.sampler.multivariate,
        group=spec.sampler.multivariate,  # a conditional space: one model per set of fields
        constraints_func=None
        if own
        else lambda t: [
            float(t.user_attrs.get("over", 0)),
            float(t.user_attrs.get(OVER_SECONDS, 0)),
        ],
    )


class AfterTrained:
    """An Optuna pruner that prunes only once ``startup`` complete trials have trained
    (reported an epoch). Optuna's median and percentile pruners count every COMPLETE trial,
    and an over-budget trial is told COMPLETE (value 0, its constraint infeasible) without
    training: a search whose startup samples many of them (the goal study's 16 of its first
    28) had its pruner judge every trial against the first one or two that trained."""

    def __init__(self, inner, startup: int):
        self.inner, self.startup = inner, startup

    def prune(self, study, trial) -> bool:
        from optuna.trial import TrialState

        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if sum(bool(t.intermediate_values) for t in done) < self.startup:
            return False
        return self.inner.prune(study, trial)


def pruner(spec: TuneSpec):
    """The spec's pruner. The trial reports every epoch; it asks only at ``at_epochs``."""
    import optuna

    if spec.pruner.name == "none" or not spec.pruner.at_epochs:
        return optuna.pruners.NopPruner()
    if spec.pruner.name in ("median", "percentile"):
        percent = 50.0 if spec.pruner.name == "median" else spec.pruner.percentile
        inner = optuna.pruners.PercentilePruner(percent, n_startup_trials=0)  # startup: below
        return AfterTrained(inner, spec.pruner.startup_trials)
    if spec.pruner.name == "threshold":
        return optuna.pruners.ThresholdPruner(lower=spec.pruner.lower)
    first = min(spec.pruner.at_epochs)
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=first)


def load_study(tune_dir: Path, spec: TuneSpec, record: dict[str, Any], worker: int = 0):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(tune_dir, record.get("storage"))
    study = optuna.create_study(
        study_name=spec.name, storage=storage, direction="maximize", load_if_exists=True,
        sampler=sampler(spec, worker), pruner=pruner(spec),
    )  # fmt: skip
    return study, storage


def enqueue_start(study, spec: TuneSpec) -> int:
    """Enqueue the tune file's ``[[start]]`` trials on a study that has none yet (call it
    under ``ask_lock``); how many were enqueued."""
    if study.get_trials(deepcopy=False):
        return 0
    for params in spec.start:
        study.enqueue_trial(params)
    return len(spec.start)


def read_record(tune_dir: Path) -> dict[str, Any]:
    path = tune_dir / TUNE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{tune_dir} is not a tune folder ({TUNE}: {e}); give the --out of "
                        "`mnist-dist tune`") from None  # fmt: skip
    if not isinstance(record, dict) or "trials" not in record:
        raise UserError(f"{path} is not a tune record; give the --out of `mnist-dist tune`")
    return record


def write_record(tune_dir: Path, record: dict[str, Any]) -> None:
    write_json(tune_dir / TUNE, record)


@contextlib.contextmanager
def ask_lock(tune_dir: Path) -> Iterator[None]:
    """Held while a worker counts, asks and locks its trial, and while ``recover`` scans."""
    fd = os.open(tune_dir / "ask.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def hold_trial(tune_dir: Path, number: int) -> int:
    """Take trial ``number``'s lock for this process's lifetime or until ``release``; the
    kernel drops it when the process dies, however it dies."""
    (tune_dir / LOCKS).mkdir(exist_ok=True)
    fd = os.open(tune_dir / LOCKS / f"trial-{number}", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new trial: nobody else holds it
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd


def release(fd: int) -> None:
    os.close(fd)


def lock_free(tune_dir: Path, number: int) -> bool:
    """Whether nobody holds trial ``number``'s lock (its worker is gone)."""
    path = tune_dir / LOCKS / f"trial-{number}"
    if not path.is_file():
        return True
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def job_gone(job: str | None) -> bool:
    """Whether SLURM no longer knows the worker's job (False when it cannot be asked)."""
    if not job or not job[0].isdigit():
        return False
    from ..sweeps.state import LIVE_STATES, squeue_states

    live = squeue_states([job])
    return live is not None and (job not in live or live[job][0] not in LIVE_STATES)


def job_name() -> str:
    """This worker's job as squeue names it ("123_4" in an array), or its pid and host."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or f"pid {os.getpid()} on {socket.gethostname()}"


def recover(tune_dir: Path, study, storage) -> list[int]:
    """Fail and enqueue again every RUNNING trial whose worker is gone; their numbers.
    Call under ``ask_lock``. A trial whose worker died before its config was whole (no
    ``trial_ids`` yet: killed while asking) trained nothing: it is only marked lost, and
    the next ask samples afresh."""
    from optuna.trial import TrialState

    lost = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not (lock_free(tune_dir, t.number) or job_gone(t.user_attrs.get("job"))):
            continue
        storage.set_trial_user_attr(t._trial_id, LOST, True)
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        if "trial_ids" in t.user_attrs:
            study.enqueue_trial(t.params, user_attrs={RESUMES: t.number})
        lost.append(t.number)
    return lost


def counts(study, tune_dir: Path | None = None) -> Counter:
    """Trials by state: complete, pruned, running, failed, waiting, lost, over_budget,
    over_time (complete, but trained longer than max_seconds) (and,
    given the folder, "stalled": running, its worker gone, not yet recovered), and
    ``used``: the trials that count toward ``--trials`` (all but the lost and the waiting)."""
    c: Counter = Counter()
    for t in study.get_trials(deepcopy=False):
        name = t.state.name.lower()
        if t.user_attrs.get(LOST):
            name = LOST
        elif t.user_attrs.get(OVER_BUDGET):
            name = OVER_BUDGET
        elif name == "complete" and t.user_attrs.get(OVER_SECONDS, 0) > 0:
            name = "over_time"
        elif name == "running" and tune_dir is not None and lock_free(tune_dir, t.number):
            name = "stalled"
        c[name] += 1
    c["used"] = sum(c[k] for k in ("complete", "pruned", "running", "stalled", "fail",
                                   OVER_BUDGET, "over_time"))  # fmt: skip
    return c


def best_trials(study, k: int | None = None) -> list:
    """Complete, feasible trials (within max_params and max_seconds), best mean validation
    accuracy first."""
    from optuna.trial import TrialState

    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not t.user_attrs.get(OVER_BUDGET) and t.user_attrs.get(OVER_SECONDS, 0) <= 0
    ]
    done.sort(key=lambda t: (-t.value, t.number))
    return done[:k] if k else done


def trial_row(t) -> dict[str, Any]:
    accs = t.user_attrs.get("val_accs") or []
    return dict(
        number=t.number, value=t.value, state=t.state.name.lower(),
        std=statistics.stdev(accs) if len(accs) > 1 else None, val_accs=accs,
        params=t.user_attrs.get("params"), seconds=t.user_attrs.get("seconds"),
        label=t.user_attrs.get("label"), trial_ids=t.user_attrs.get("trial_ids"),
        reused=bool(t.user_attrs.get("reused")), config=t.params,
    )  # fmt: skip
