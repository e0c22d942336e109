"""A tune worker: pull trials from the shared study until ``--trials`` are used, train each.

    python -m mnist_dist.tune.worker DIR --index K --trials N   (what `tune --cluster local` starts)

On SLURM, ``Worker`` is the submitit callable of each array task; ``checkpoint`` requeues it
on preemption, and the requeued worker's first ``recover`` hands its trial to whoever asks
next (itself, usually), which resumes the trial's runs from their checkpoints.

A trial is ordinary runs: one run folder per seed under ``DIR/runs/``, trained packed (one
process, one grouped net) or one after another. The pruner hears the mean validation
accuracy over the trial's seeds after every epoch (one after another: each seed's own, at
step ``k * epochs + epoch``) through the trainer's per-epoch hook; a pruned trial's runs
end with result.json's state "pruned" and no checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Runtime, TrainConfig
from ..errors import ArgumentParser, cli_errors
from ..fsio import write_text
from ..rundir import ERROR, RESULT
from . import study as st
from .spec import TuneSpec, load_tune


@dataclass
class Worker:
    """One worker of a tune: submitit pickles it into each job of the array."""

    tune_dir: str
    index: int
    trials: int  # the total over every call and worker
    threads: int = 1
    data_dir: str | None = None

    def __call__(self) -> int:
        os.environ["OMP_NUM_THREADS"] = str(self.threads)
        return work(Path(self.tune_dir), self.index, self.trials, self.threads, self.data_dir)

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit on SIGUSR2: requeue this worker; its trial resumes from checkpoints."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def work(tune_dir: Path, index: int, total: int, threads: int, data_dir: str | None) -> int:
    """Ask, train, tell until ``total`` trials are used; the number this worker ran."""
    record = st.read_record(tune_dir)
    spec = load_tune(tune_dir / st.SPEC)
    if spec.time_reference:  # this CPU's own limit, before any trial
        spec = dataclasses.replace(spec, max_seconds=calibrate(spec, tune_dir, index, threads,
                                                               data_dir))  # fmt: skip
    study, storage = st.load_study(tune_dir, spec, record, worker=index)
    job = st.job_name()
    done = 0
    while True:
        with st.ask_lock(tune_dir):
            st.recover(tune_dir, study, storage)
            c = st.counts(study)
            if c["used"] >= total and not c["waiting"]:
                break
            trial = study.ask()
            lock = st.hold_trial(tune_dir, trial.number)
            trial.set_user_attr("job", job)
        try:
            run_trial(spec, study, trial, tune_dir, threads, data_dir)
        finally:
            st.release(lock)
        done += 1
    print(f"worker {index}: {done} trials; the study holds {c['used']} of {total}", flush=True)
    return done


def run_trial(spec: TuneSpec, study, trial, tune_dir: Path, threads: int, data_dir) -> None:
    """One trial, told to the study: complete, pruned, or failed with its error's last line.
    A trial's fault (a sampled config the trainer refuses, a crash) never ends the worker."""
    from optuna.trial import TrialState

    try:
        value = attempt(spec, study, trial, tune_dir, threads, data_dir)
    except Exception:  # not BaseException: submitit's requeue exits with SystemExit
        text = traceback.format_exc()
        print(text, flush=True)
        for tid in trial.user_attrs.get("trial_ids", []):
            if (tune_dir / st.RUNS / tid).is_dir():
                write_text(tune_dir / st.RUNS / tid / ERROR, text)
        trial.set_user_attr("error", text.strip().splitlines()[-1][:300])
        study.tell(trial, state=TrialState.FAIL)
        return
    if value == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    elif isinstance(value, str):
        trial.set_user_attr("error", value)
        study.tell(trial, state=TrialState.FAIL)
    else:
        study.tell(trial, value)


def attempt(spec: TuneSpec, study, trial, tune_dir: Path, threads: int, data_dir):
    """Check the budget, train (or reuse) the trial's runs: the objective's value, or
    "pruned", or why the trial failed."""
    from ..models import build_model, count_params

    cfgs = spec.configs(trial)
    ids = [c.trial_id() for c in cfgs]
    params = count_params(build_model(cfgs[0].step, **cfgs[0].shape()))
    trial.set_user_attr("params", params)
    if spec.max_seconds is not None:  # this worker's: calibrated on its CPU, or the file's
        trial.set_user_attr("max_seconds", spec.max_seconds)
    over = float(params - spec.max_params)  # the constraint: feasible at 0 or below
    if hasattr(trial, "set_constraint"):  # Optuna 5; Optuna 4's TPE reads "over"
        trial.set_constraint("params", over)
    trial.set_user_attr("over", over)
    trial.set_user_attr("trial_ids", ids)
    trial.set_user_attr("label", cfgs[0].label())
    print(f"trial {trial.number}: {cfgs[0].label()}, {params:,} params", flush=True)
    if params > spec.max_params:  # never trains; TPE's constraint ranks it below all
        trial.set_user_attr(st.OVER_BUDGET, True)
        print(f"trial {trial.number}: over max_params ({spec.max_params:,}): not trained")
        return 0.0
    runs = tune_dir / st.RUNS
    if st.RESUMES in trial.user_attrs:  # the lost trial's curve, so the pruner sees it whole
        lost = study.get_trials(deepcopy=False)[trial.user_attrs[st.RESUMES]]  # by number
        for step, value in sorted(lost.intermediate_values.items()):
            trial.report(value, step)
    elif all((runs / i / RESULT).is_file() for i in ids):
        trial.set_user_attr("reused", True)  # TPE repeated a config: its runs hold results
    results = train_trial(spec, cfgs, trial, runs, threads, data_dir)
    states = {r["state"] for r in results}
    accs = [r["final_val_acc"] for r in results]
    seconds = trial_seconds(spec, results)
    trial.set_user_attr("val_accs", accs)
    trial.set_user_attr("seconds", seconds)
    if spec.max_seconds is not None and "pruned" not in states:  # a pruned trial's are partial
        late = seconds - spec.max_seconds
        if hasattr(trial, "set_constraint"):
            trial.set_constraint("seconds", late)
        trial.set_user_attr(st.OVER_SECONDS, late)
    if "pruned" in states:
        return "pruned"
    if states != {"done"}:
        return f"a seed {'/'.join(sorted(states - {'done'}))}"
    return statistics.fmean(accs)


def train_trial(spec: TuneSpec, cfgs: list[TrainConfig], trial, runs: Path, threads, data_dir):
    """The trial's runs through the ordinary trainer, resumed where their folders hold a
    checkpoint or a result; their result dicts, in seed order."""
    from ..training.loop import train
    from ..training.packed import train_seeds

    rt = Runtime(data_dir=data_dir, resume=True, cpu=True, threads=threads, progress=False)
    if spec.packed:
        rt = dataclasses.replace(rt, out=str(runs), seeds=list(spec.seeds))
        hook = Pruning(trial, spec, 0, cfgs[0].epochs)
        by_seed = when_free(trial, train_seeds, cfgs[0], rt, hook)
        return [by_seed[c.seed] for c in cfgs]
    results = []
    for k, cfg in enumerate(cfgs):  # one after another; a pruned seed ends the trial
        one = dataclasses.replace(rt, out=str(runs / cfg.trial_id()))
        hook = Pruning(trial, spec, k * cfg.epochs, cfg.epochs * len(cfgs))
        results.append(when_free(trial, train, cfg, one, hook))
        if results[-1]["state"] != "done":
            break
    return results


BUSY_POLL_S = 10.0  # seconds between looks at a run folder another worker trains


def when_free(trial, fn, *args):
    """``fn(*args)``, once no other worker trains the same runs: TPE may sample a config
    that a running trial holds; this one then reuses its results instead of failing."""
    from ..rundir import FolderBusy

    while True:
        try:
            return fn(*args)
        except FolderBusy as e:
            print(f"{e}: waiting, to reuse its results", flush=True)
            trial.set_user_attr("reused", True)
            time.sleep(BUSY_POLL_S)


@dataclass
class Pruning:
    """The per-epoch hook of a trial: report the mean validation accuracy of the seeds
    still training, and prune them all when the pruner says so at one of ``at_epochs``, or
    from epoch 2 on when the trial's training time, projected from its epochs so far, is
    over SLOW x max_seconds (it would end infeasible: why train it to the end?)."""

    trial: Any
    spec: TuneSpec
    offset: int  # steps before this run's first epoch (seeds one after another)
    total_epochs: int  # the trial's epochs, over all its runs
    seconds: list[float] = field(default_factory=list)  # this attempt's epochs' seconds

    def __call__(self, epoch: int, rows: list[dict[str, Any]]) -> list[str]:
        from ..training.loop import GO_ON, PRUNED

        if not rows:
            return []
        self.trial.report(statistics.fmean(r["val_acc"] for r in rows), self.offset + epoch)
        # the steps this attempt trained: a resumed trial's and its lost one's never overlap
        trained = self.trial.user_attrs.get("trained_steps", [])  # local: no storage read
        self.trial.set_user_attr("trained_steps", [*trained, self.offset + epoch])
        self.seconds.append(rows[0]["seconds"])  # a pack's row holds the whole pack's
        projected = statistics.fmean(self.seconds[-3:]) * self.total_epochs
        if self.spec.max_seconds and epoch >= 2 and projected > SLOW * self.spec.max_seconds:
            self.trial.set_user_attr("too_slow", projected)
            return [PRUNED] * len(rows)
        if epoch in self.spec.pruner.at_epochs and self.trial.should_prune():
            return [PRUNED] * len(rows)
        return [GO_ON] * len(rows)


def calibrate(spec: TuneSpec, tune_dir: Path, index: int, threads: int, data_dir) -> float:
    """max_seconds on this worker's CPU, as loaded now: ``times`` x the reference step's
    training seconds for a trial's work (its recipe under the tune's fixed epochs, val_split,
    train_limit and precision; the trial's seeds, packed as the trial's are), timed by the
    trainer itself over one epoch of the trial's size, times the trial's epochs. Short
    epochs mislead: on a Zen 4, epochs of 2,000 and 10,000 images a seed projected step7 at
    700-860 s where its full epochs take ~930 s. Workers started together calibrate side
    by side, as their trials then run."""
    from ..training.loop import train
    from ..training.packed import train_seeds

    times, step = spec.time_reference
    keep = ("epochs", "val_split", "train_limit", "mixed_precision", "channels_last", "compile")
    full = TrainConfig(step=step, test_eval="never",
                       **{k: spec.fixed[k] for k in keep if k in spec.fixed}).resolve()  # fmt: skip
    cal = dataclasses.replace(full, epochs=1)
    out = tune_dir / "calibration" / f"worker-{index}-{time.strftime('%Y%m%d-%H%M%S')}"
    rt = Runtime(data_dir=data_dir, cpu=True, threads=threads, progress=False, out=str(out))
    if spec.packed:
        result = next(iter(train_seeds(cal, dataclasses.replace(rt, seeds=spec.seeds)).values()))
        per_trial = 1  # a pack's epoch seconds are the whole pack's
    else:  # one seed timed; the trial trains its seeds one after another
        result, per_trial = train(dataclasses.replace(cal, seed=spec.seeds[0]), rt), len(spec.seeds)
    reference = result["history"][-1]["seconds"] * full.epochs * per_trial
    write_text(out / "calibration.txt", f"{step} {reference:.3f} s for a trial's work; "
               f"max_seconds {times} x that = {times * reference:.3f} s\n")  # fmt: skip
    print(
        f"worker {index}: max_seconds {times * reference:.0f} = {times} x {step}'s "
        f"{reference:.0f} s for a trial's work on this CPU ({out})",
        flush=True,
    )
    return times * reference


# A trial projected to train this many times max_seconds is pruned early; nearer the
# limit it trains to the end, and its measured seconds decide.
SLOW = 1.25


def trial_seconds(spec: TuneSpec, results: list[dict]) -> float:
    """The trial's training time, seconds: its epochs' training seconds (no scoring, no
    setup), a pack's once (each seed's row holds the whole pack's), one after another summed."""
    runs = results[:1] if spec.packed else results
    return sum(row.get("seconds", 0.0) for r in runs for row in r["history"])


@cli_errors
def main(argv: list[str] | None = None, prog: str = "python -m mnist_dist.tune.worker") -> None:
    p = ArgumentParser(prog=prog, description="one worker of `mnist-dist tune --cluster local`")
    p.add_argument("tune_dir")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--trials", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir")
    a = p.parse_args(argv)
    Worker(a.tune_dir, a.index, a.trials, a.threads, a.data_dir)()


if __name__ == "__main__":
    main()
