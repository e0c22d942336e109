"""The tune folder's pure decisions, fast: a dead worker's trial is found by its free lock
and handed on with its parameters; counts toward --trials; the fronts of the report."""

from __future__ import annotations

import pytest
import tomllib

from mnist_dist.tune import study as st
from mnist_dist.tune.report import front
from mnist_dist.tune.spec import load_tune

from .test_tune_spec import GOOD, write


@pytest.fixture
def tune(tmp_path):
    spec = load_tune(write(tmp_path, GOOD))
    study, storage = st.load_study(tmp_path, spec, {})
    return tmp_path, spec, study, storage


def test_a_running_trial_is_handed_on_only_once_its_lock_is_free(tune):
    folder, spec, study, storage = tune
    trial = study.ask()
    lr = trial.suggest_float("lr", 0.01, 0.2, log=True)
    trial.set_user_attr("trial_ids", ["family-s0-x"])  # its config is whole: it may train
    fd = st.hold_trial(folder, trial.number)
    assert st.recover(folder, study, storage) == []  # held: a live worker trains it
    assert st.counts(study, folder)["running"] == 1
    st.release(fd)  # what the kernel does when the worker dies
    assert st.counts(study, folder)["stalled"] == 1  # --status sees it before any recovery
    assert st.recover(folder, study, storage) == [trial.number]
    c = st.counts(study, folder)
    assert (c["lost"], c["waiting"], c["used"]) == (1, 1, 0)  # the lost one does not count
    heir = study.ask()  # the next worker gets the same parameters, marked as a resume
    assert heir.user_attrs[st.RESUMES] == trial.number
    assert heir.suggest_float("lr", 0.01, 0.2, log=True) == lr
    assert st.recover(folder, study, storage) == [heir.number]  # nobody holds its lock either


def test_a_trial_lost_before_its_config_was_whole_is_not_handed_on(tune):
    """Killed between ask and the last suggest: nothing trained, no parameters to resume."""
    folder, spec, study, storage = tune
    trial = study.ask()
    assert st.recover(folder, study, storage) == [trial.number]  # no lock held
    c = st.counts(study, folder)
    assert (c["lost"], c["waiting"], c["used"]) == (1, 0, 0)
    assert st.RESUMES not in study.ask().user_attrs  # the next ask samples afresh


@pytest.mark.parametrize("name", ["median", "percentile"])
def test_the_pruner_waits_for_trials_that_trained_not_over_budget_ones(tmp_path, name):
    """Over-budget trials are told COMPLETE without training: they never open pruning."""
    text = GOOD.replace('name = "median"', f'name = "{name}"\npercentile = 25.0', 1)
    spec = load_tune(write(tmp_path, text))
    study, _ = st.load_study(tmp_path, spec, {})
    for _ in range(spec.pruner.startup_trials + 3):  # over budget: no epoch reported
        t = study.ask()
        t.set_user_attr(st.OVER_BUDGET, True)
        study.tell(t, 0.0)
    first = study.ask()  # one trial that trained, far better at epoch 3
    first.report(97.0, 3)
    study.tell(first, 99.0)
    bad = study.ask()
    bad.report(10.0, 3)
    assert not bad.should_prune()  # one trained trial of the startup_trials asked for
    for acc in range(spec.pruner.startup_trials - 1):  # the rest of them
        t = study.ask()
        t.report(97.0 + acc * 0.1, 3)
        study.tell(t, 99.0)
    assert bad.should_prune()


def test_counts_toward_trials_exclude_the_lost_and_include_the_infeasible(tune):
    folder, spec, study, storage = tune
    for value in (90.0, 95.0):
        t = study.ask()
        study.tell(t, value)
    t = study.ask()
    t.set_user_attr(st.OVER_BUDGET, True)
    study.tell(t, 0.0)
    t = study.ask()
    t.set_user_attr(st.OVER_SECONDS, 12.5)  # trained 12.5 s longer than max_seconds
    study.tell(t, 99.0)
    c = st.counts(study, folder)
    assert (c["complete"], c[st.OVER_BUDGET], c["over_time"], c["used"]) == (2, 1, 1, 4)
    assert [x.value for x in st.best_trials(study)] == [95.0, 90.0]  # infeasible left out


def test_the_front_keeps_trials_no_other_beats_on_both():
    rows = [
        dict(number=0, value=99.0, params=7000),
        dict(number=1, value=98.0, params=5000),
        dict(number=2, value=97.0, params=6000),  # beaten by 1: cheaper and better
        dict(number=3, value=99.2, params=7900),
        dict(number=4, value=98.5, params=None),  # unknown cost: not on the front
    ]
    assert [r["number"] for r in front(rows, "params")] == [1, 0, 3]


def test_start_trials_run_first_once_and_epochs_may_be_searched(tmp_path):
    """[[start]] trials are enqueued on a new study only, in order; a field they leave out
    is sampled; a searched epochs reaches the trial's config."""
    text = GOOD.replace(
        "epochs = 15\nval_split = 5000\n[space]",
        "val_split = 5000\n[space]\nepochs = { low = 10, high = 15 }",
    )
    text = text.replace("[pruner]", "[[start]]\nlr = 0.05\nepochs = 12\n"
                        "[[start]]\nbatch_size = 64\n[pruner]")  # fmt: skip
    spec = load_tune(write(tmp_path, text))
    study, _ = st.load_study(tmp_path, spec, {})
    assert st.enqueue_start(study, spec) == 2
    assert st.enqueue_start(study, spec) == 0  # the study has trials now: never twice
    first, second = study.ask(), study.ask()
    a, b = spec.config(first, 0), spec.config(second, 0)
    assert (a.lr, a.epochs, b.batch_size) == (0.05, 12, 64)
    assert 0.01 <= b.lr <= 0.2 and 10 <= b.epochs <= 15  # sampled
    third = spec.config(study.ask(), 0)  # the queue is empty: sampled
    assert 10 <= third.epochs <= 15


def test_the_threshold_pruner_judges_a_trial_alone(tmp_path):
    text = GOOD.replace('name = "median"', 'name = "threshold"\nlower = 95.0')
    spec = load_tune(write(tmp_path, text))
    study, _ = st.load_study(tmp_path, spec, {})
    good, bad = study.ask(), study.ask()  # the first trials: no startup to wait for
    good.report(96.0, 3)
    bad.report(90.0, 3)
    assert not good.should_prune() and bad.should_prune()


def scheduler_tune(folder, schedulers: list[str]):
    """A tune folder whose study searched the scheduler with lr_gamma fixed for StepLR, and
    one complete trial per entry of ``schedulers``, best first; with its spec and trials."""
    text = GOOD.replace("[space]", '[space]\nscheduler = { choices = ["onecycle", "step"] }\n'
                        "lr_step = { low = 8, high = 10 }")  # fmt: skip
    text = text.replace("val_split = 5000", "val_split = 5000\nlr_gamma = 0.1")
    (folder / st.SPEC).write_text(text)
    st.write_record(folder, dict(name="t", file="t.toml", storage=None, trials=9, workers=[]))
    spec = load_tune(folder / st.SPEC)
    study, _ = st.load_study(folder, spec, st.read_record(folder))
    trials = []
    for i, scheduler in enumerate(schedulers):
        study.enqueue_trial({"scheduler": scheduler})
        trial = study.ask()
        spec.config(trial, seed=0)  # samples the rest, as a worker does
        trial.set_user_attr("params", 7000)
        trial.set_user_attr("val_accs", [99.0 - i] * 3)
        study.tell(trial, 99.0 - i)
        trials.append(study.trials[-1])
    return spec, trials


def test_promote_keeps_a_onecycle_trial_whose_tune_fixes_steplr_knobs(tmp_path, monkeypatch):
    """A tune that searches the scheduler fixes lr_gamma for its StepLR trials; a OneCycle
    trial's runs drop it, and so must its promoted recipe (it once raised instead)."""
    from mnist_dist.tune import promote as pr

    spec, (trial,) = scheduler_tune(tmp_path, ["onecycle"])
    cfg = spec.sample(lambda d: trial.params[d.name], seed=0)
    monkeypatch.setattr(pr, "STEPS_FILE", tmp_path / "steps.toml")
    pr.promote(tmp_path, 1, "step99", tmp_path / "jobs", list(range(100, 120)))
    recipe = tomllib.loads((tmp_path / "steps.toml").read_text())["step99"]["recipe"]
    assert recipe["scheduler"] == "onecycle" and "lr_gamma" not in recipe
    assert recipe["lr"] == cfg.lr and recipe["pct_start"] == cfg.pct_start
    assert (tmp_path / "jobs" / "step99_test.toml").is_file()


def test_revalidate_writes_the_best_trials_on_fresh_seeds_as_a_sweep(tmp_path, capsys):
    """The sweep's runs are the trials' own configs on the new seeds, best first; the
    test set stays locked; a seed of the search or an existing file is refused."""
    from mnist_dist.errors import UserError
    from mnist_dist.sweeps.spec import load_sweep
    from mnist_dist.tune.promote import revalidate

    spec, trials = scheduler_tune(tmp_path, ["onecycle", "step", "onecycle"])
    jobs = tmp_path / "jobs"
    revalidate(tmp_path, 2, jobs, [3, 4, 5, 6, 7])
    sweep = load_sweep(jobs / "t_revalidate.toml")
    want = [spec.sample(lambda d, t=t: t.params[d.name], seed=s)
            for t in trials[:2] for s in (3, 4, 5, 6, 7)]  # fmt: skip
    assert [c.to_dict() for c in sweep.expand()] == [c.to_dict() for c in want]
    assert {c.test_eval for c in want} == {"never"} and {c.val_split for c in want} == {5000}
    assert sweep.resources.pack_seeds == 1  # the tune trained its seeds one after another
    assert "t_revalidate.toml" in capsys.readouterr().out
    with pytest.raises(UserError, match="exists"):
        revalidate(tmp_path, 2, jobs, [3, 4, 5, 6, 7])
    with pytest.raises(UserError, match="2 is a search seed"):
        revalidate(tmp_path, 2, tmp_path / "other", [2, 3])
    with pytest.raises(UserError, match="ranks 3 complete trials"):
        revalidate(tmp_path, 4, tmp_path / "other", [3])
