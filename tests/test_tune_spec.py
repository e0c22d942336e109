"""Tune files (issue #23's groundwork): strict, the test set locked, and a search space that
Optuna samples within its bounds, reproducibly for a seed."""

from __future__ import annotations

import math

import pytest

from mnist_dist.errors import UserError
from mnist_dist.tune.spec import load_tune

from .conftest import REPO

GOOD = """
name = "t"
seeds = [0, 1, 2]
max_params = 8000
max_epochs = 15
[fixed]
step = "step7"
epochs = 15
val_split = 5000
[space]
lr = { low = 0.01, high = 0.2, log = true }
batch_size = { choices = [64, 128] }
pct_start = { low = 0.1, high = 0.4, step = 0.05 }
train_limit = { low = 20000, high = 55000, step = 5000 }
[pruner]
name = "median"
at_epochs = [3, 6, 9]
"""


def write(tmp_path, text: str):
    path = tmp_path / "t.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", sorted((REPO / "jobs").glob("*_tune*.toml")), ids=lambda p: p.name)
def test_the_shipped_tune_files_load_with_the_test_set_locked(path):
    spec = load_tune(path)
    assert spec.fixed["test_eval"] == "never" and spec.fixed["val_split"] > 0


def test_max_seconds_is_seconds_or_a_fraction_of_a_steps_time(tmp_path):
    assert load_tune(write(tmp_path, GOOD)).max_seconds is None
    text = GOOD.replace("max_params = 8000", "max_params = 8000\nmax_seconds = 675")
    assert load_tune(write(tmp_path, text)).max_seconds == 675
    text = GOOD.replace(
        "max_params = 8000", 'max_params = 8000\nmax_seconds = { times = 0.45, step = "step7" }'
    )
    spec = load_tune(write(tmp_path, text))
    assert spec.max_seconds is None and spec.time_reference == (0.45, "step7")  # set by workers


def test_a_space_is_sampled_within_its_bounds_and_reproducibly(tmp_path):
    import optuna

    spec = load_tune(write(tmp_path, GOOD))
    assert spec.fixed["test_eval"] == "never"  # locked, though the file does not say it

    def sample(seed: int) -> list[dict]:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        out = []
        for _ in range(30):
            trial = study.ask()
            cfg = spec.config(trial, seed=1)
            out.append(dict(lr=cfg.lr, batch_size=cfg.batch_size, pct_start=cfg.pct_start,
                            train_limit=cfg.train_limit))  # fmt: skip
            study.tell(trial, 0.0)
        return out

    first = sample(0)
    assert first == sample(0) and first != sample(1)
    assert all(0.01 <= s["lr"] <= 0.2 for s in first)
    assert {s["batch_size"] for s in first} == {64, 128}
    assert {s["train_limit"] for s in first} <= set(range(20000, 55001, 5000))  # ints
    steps = [round((s["pct_start"] - 0.1) / 0.05, 9) for s in first]
    assert all(0.1 - 1e-9 <= s["pct_start"] <= 0.4 + 1e-9 for s in first)
    assert all(float(k).is_integer() for k in steps)  # on the 0.05 grid
    logs = sorted(math.log10(s["lr"]) for s in first)  # log scale: both decades are sampled
    assert logs[0] < -1.3 and logs[-1] > -1.0


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (("epochs = 15\nval_split = 5000\n[space]",
          "val_split = 5000\n[space]\nepochs = { low = 5, high = 20 }"),
         "epochs (20) is over max_epochs (15)"),
        (('name = "median"', 'name = "threshold"'), "lower (a validation accuracy in %"),
        (('name = "median"', 'name = "median"\nlower = 95.0'), 'with name = "threshold"'),
        (('name = "median"', 'name = "threshold"\nlower = 101'), "lower (a validation"),
        (("[pruner]", "[[start]]\nmomentum = 0.9\n[pruner]"), "'momentum' is not searched"),
        (("[pruner]", "[[start]]\nlr = 0.5\n[pruner]"), "lr = 0.5 is outside its [space] range"),
        (("[pruner]", "[[start]]\nbatch_size = 32\n[pruner]"), "outside its [space] range"),
        (("[pruner]", "[[start]]\ntrain_limit = 20000.5\n[pruner]"), "outside its [space]"),
        (("max_epochs = 15", "max_epochs = 15\nstart = 3"), "write each starting trial as a"),
        (("[space]", "[space]\nlr_step = { low = 2, high = 8 }"), "lr_step never applies"),
        (("[space]", "[space]\nval_split = { choices = [0, 5000] }"), "val_split cannot be"),
        (("[space]", "[space]\ntest_eval = { choices = [\"never\"] }"), "test_eval cannot be"),
        (("val_split = 5000", "val_split = 5000\ntest_eval = \"final\""),
         'test_eval must be "never"'),
        (("val_split = 5000", "val_split = 0"), "val_split must hold validation images"),
        (("\nepochs = 15", "\nepochs = 20"), "epochs (20) is over max_epochs (15)"),
        (("[space]", "[space]\nlrr = { low = 1, high = 2 }"), "unknown field 'lrr'"),
        (("[space]", "[space]\nlr_gamma = { low = 0.5, high = 0.1 }"), "low must be below high"),
        (("[space]", "[space]\nweight_decay = { low = 0, high = 0.1, log = true }"),
         "log needs low above 0"),
        (("[space]", "[space]\noptimizer = { low = 0, high = 1 }"), "search it with choices"),
        (("[space]", "[space]\nmomentum = { low = 0.8 }"), "needs low and high"),
        (("[space]", "[space]\nmomentum = { low = 0.8, high = 0.99, spread = 1 }"),
         "unknown key 'spread'"),
        (("[fixed]", "[fixed]\nlr = 0.1"), "'lr' is in both [fixed] and [space]"),
        (("max_params = 8000", "max_params = 0"), "max_params must be a whole number"),
        (("seeds = [0, 1, 2]", "seeds = [0, 0]"), "seeds must be a non-empty list of distinct"),
        (('name = "t"', 'name = "t\\n"'), "name must be a folder-safe string"),
        (("name = \"t\"", "name = \"t\"\ncolour = 1"), "unknown key 'colour'"),
        (("at_epochs = [3, 6, 9]", "at_epochs = [3, 15]"), "at_epochs: 15 is not an epoch"),
        (('name = "median"', 'name = "hyperband"'), "[pruner].name must be one of"),
        (("[pruner]", "[resources]\npartition = \"a\\nb\"\n[pruner]"), "newline"),
        (("[space]", "[space]\nrotate_deg = { low = 0, high = 1e400 }"), "both finite"),
        (("[pruner]", "[resources]\npack_seeds = 2\n[pruner]"), "pack_seeds must be 1"),
        (("[pruner]", "[resources]\nnodes = 2\n[pruner]"), "one process"),
        (('name = "median"', 'name = "median"\nstartup_trials = -1'), "startup_trials"),
        (("[pruner]", "[sampler]\nstartup_trials = 1.5\n[pruner]"), "startup_trials"),
        (("[space]", "[space]\nwidth1 = { low = 4, high = 8 }"), "--step family"),
        (("[fixed]", "[fixed]\nseed = 3"), "[fixed].seed: a trial's seeds are"),
        (("max_params = 8000", "max_params = 8000\nmax_seconds = -1"), "max_seconds must be"),
        (("max_params = 8000", 'max_params = 8000\nmax_seconds = { times = 0.45 }'),
         'max_seconds as a table is { times = 0.45, step = "step7" }; got keys times'),
        (("max_params = 8000", 'max_params = 8000\nmax_seconds = { times = 0, step = "step7" }'),
         "max_seconds.times must be a number above 0"),
        (("max_params = 8000", 'max_params = 8000\nmax_seconds = { times = 0.5, step = "s9" }'),
         "max_seconds.step 's9' is no registered step"),
    ],
)  # fmt: skip
def test_bad_tune_files_are_one_line_errors(tmp_path, edit, fragment):
    old, new = edit
    assert old in GOOD
    with pytest.raises(UserError) as e:
        load_tune(write(tmp_path, GOOD.replace(old, new, 1)))
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--trials", "0"], "--trials must be at least 1"),
        (["--workers", "-1"], "--workers must be at least 0"),
        (["--poll", "nan"], "--poll"),
        (["--name", "step9"], "add --promote RANK"),
        (["--status"], "not a tune folder"),
        (["--cluster", "pbs"], "invalid choice"),
    ],
)
def test_bad_tune_commands_are_one_line_errors(tmp_path, capsys, argv, fragment):
    from .conftest import cli_error

    line = cli_error(capsys, "tune", str(write(tmp_path, GOOD)), *argv)
    assert fragment in line, line
    assert not (tmp_path / "runs").exists()


def test_a_tune_folder_refuses_another_file_and_another_storage(tmp_path, capsys):
    from mnist_dist.cli import main

    from .conftest import cli_error

    out, first = tmp_path / "out", write(tmp_path, GOOD)
    main(["tune", str(first), "--cluster", "local", "--workers", "0", "--out", str(out)])
    assert "0 workers started" in capsys.readouterr().out  # recovers, starts none
    other = tmp_path / "other.toml"
    other.write_text(GOOD.replace("max_params = 8000", "max_params = 7000"))
    line = cli_error(capsys, "tune", str(other), "--cluster", "local", "--out", str(out))
    assert "holds another search" in line and str(out) in line
    line = cli_error(capsys, "tune", str(out), "--cluster", "local", "--storage", "sqlite:///x.db")
    assert "drop --storage" in line


def test_a_schedulers_own_knobs_are_sampled_only_under_it(tmp_path):
    """A conditional space (define-by-run): StepLR's lr_step under StepLR, OneCycle's
    pct_start under OneCycle, and a [fixed] knob of the other scheduler dropped."""
    import optuna

    from mnist_dist.tune import study as st

    text = GOOD.replace("[space]", '[space]\nscheduler = { choices = ["onecycle", "step"] }\n'
                        "lr_step = { low = 8, high = 10 }")  # fmt: skip
    text = text.replace("val_split = 5000", "val_split = 5000\nlr_gamma = 0.1")
    text += '[sampler]\nname = "tpe"\nmultivariate = true\nstartup_trials = 2\n'
    spec = load_tune(write(tmp_path, text.replace('name = "median"', 'name = "percentile"')))
    study, _ = st.load_study(tmp_path, spec, {})
    assert isinstance(study.pruner, st.AfterTrained)  # its startup counts trained trials
    assert isinstance(study.pruner.inner, optuna.pruners.PercentilePruner)
    kinds = set()
    for _ in range(12):
        trial = study.ask()
        cfg = spec.config(trial, seed=0)
        study.tell(trial, 99.0)
        kinds.add(cfg.scheduler)
        if cfg.scheduler == "step":
            assert "lr_step" in trial.params and "pct_start" not in trial.params
            assert cfg.lr_step == trial.params["lr_step"] and cfg.lr_gamma == 0.1
        else:
            assert "pct_start" in trial.params and "lr_step" not in trial.params
            assert cfg.lr_step is None and cfg.lr_gamma is None
    assert kinds == {"onecycle", "step"}
