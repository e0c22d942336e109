"""``mnist-dist tune`` end to end: two local worker processes share one Optuna journal, a
trial is pruned, the tune survives the tune command and every worker being killed, and
nothing is trained twice or lost; then its report, its status and a promotion.

The sampler is "random", seeded: worker k draws from seed + k, so each worker's trials are
known in advance (lr: 1e-6 learns nothing in an epoch, 0.1 learns the toy bars). Workers
0 and 1 (seeds 0, 1) each draw lr 0.1 first and 1e-6 second: their second trial reports
epoch 1 after their first completed, so the median pruner prunes it (startup_trials = 1).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO, assert_one_line_error, make_tiny_mnist, run_cli

pytestmark = pytest.mark.slow

TUNE = """
name = "t"
seeds = [0, 1]
max_params = {max_params}
trials = 6
[fixed]
step = "family"
epochs = 3
val_split = 256
batch_size = 64
[space]
lr = {{ choices = [1e-6, 0.1] }}
width3 = {{ low = 8, high = 16 }}
[sampler]
name = "random"
seed = 0
[pruner]
at_epochs = [1, 2]
startup_trials = 1
[resources]
pack_seeds = 2
"""
BUDGET = 6600  # the family at width3 16 has 6,706 params: over


def load(out: Path):
    """The study as its journal holds it, read here with Optuna itself."""
    import optuna

    path = str(out / "journal.log")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    return optuna.load_study(study_name="t", storage=storage).get_trials(deepcopy=False)


def results(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (out / "runs").glob("*/result.json")}


def just_saved_pack(out: Path, timeout_s: float, ready) -> Path | None:
    """Wait for a pack to save an epoch (its file in runs/.packs appears or changes) such
    that ``ready(file)``, and return that file at once: a kill that follows lands between
    an epoch's save and the next epoch's end, so no epoch the hook reported goes unsaved."""
    seen: set = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = set()
        for path in (out / "runs" / ".packs").glob("*.pt"):
            try:
                now.add((path, path.stat().st_mtime_ns))
            except FileNotFoundError:  # the pack just finished
                pass
        for path, _ in now - seen:
            if ready(path):
                return path
        seen |= now
        time.sleep(0.01)
    return None


def config_hash(trial) -> str:
    """The pack file's prefix of a trial of TUNE (training.packed.PACKS)."""
    from mnist_dist.config import TrainConfig

    cfg = TrainConfig(step="family", epochs=3, val_split=256, batch_size=64, test_eval="never",
                      **trial.params)  # fmt: skip
    return cfg.resolve().config_hash()


def one_worker(target: Path, data_dir: Path, *args: str) -> None:
    """``tune TARGET --cluster local --workers 1 --wait ARGS``, which must succeed."""
    proc = run_cli("tune", str(target), "--cluster", "local", "--workers", "1", "--wait",
                   "--poll", "0.2", "--data-dir", str(data_dir), *args)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_tiny_mnist(tmp_path_factory.mktemp("data"), n_train=2048, n_test=256)


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, data_dir):
    """A tune of 6 trials over 2 local workers, killed (command and workers) mid-trial once
    a trial has finished, then continued by the same command."""
    root = tmp_path_factory.mktemp("tune")
    spec = root / "t_tune.toml"
    spec.write_text(TUNE.format(max_params=BUDGET))
    out = root / "out"
    cmd = ["tune", str(spec), "--cluster", "local", "--workers", "2", "--out", str(out),
           "--data-dir", str(data_dir), "--wait", "--poll", "0.2"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    tune = subprocess.Popen([sys.executable, "-m", "mnist_dist", *cmd], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    done = lambda _: any(r["state"] == "done" for r in results(out).values())  # noqa: E731
    if not just_saved_pack(out, 240, done):
        tune.kill()
        pytest.fail("no trial finished with another mid-way: " + tune.communicate()[0].decode())
    workers = json.loads((out / "tune.json").read_text())["workers"]
    tune.kill()
    for w in workers:
        try:
            os.kill(w["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
    tune.wait()
    before = {
        tid: (p.stat().st_mtime_ns, p.read_bytes())
        for tid, p in ((p.parent.name, p) for p in (out / "runs").glob("*/result.json"))
    }
    time.sleep(0.5)  # the kernel has dropped the dead workers' locks
    stalled = run_cli("tune", str(out), "--status", "--json")
    again = run_cli(*cmd, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    return out, before, json.loads(stalled.stdout), again.stdout


def test_two_workers_share_the_study_and_overlap_in_time(killed_and_resumed):
    out, *_ = killed_and_resumed
    # trials that ran (a trial lost while asking has no job: it never started training)
    trials = [t for t in load(out) if t.datetime_complete and "job" in t.user_attrs]
    spans = [(t.datetime_start, t.datetime_complete, t.user_attrs["job"]) for t in trials]
    assert any(a0 < b1 and b0 < a1 and ja != jb
               for a0, a1, ja in spans for b0, b1, jb in spans), spans  # fmt: skip
    assert len({job for *_, job in spans}) >= 2


def test_a_killed_tune_resumes_and_nothing_is_trained_twice_or_lost(killed_and_resumed):
    out, before, stalled, log = killed_and_resumed
    assert stalled["counts"]["stalled"] >= 1, stalled  # the dead workers' trials, seen as such
    trials = load(out)
    lost = [t for t in trials if t.user_attrs.get("lost")]
    assert lost, [t.user_attrs for t in trials]
    resumed = []
    for t in lost:  # each lost trial is resumed by exactly one successor, with its params
        heirs = [h for h in trials if h.user_attrs.get("resumes") == t.number]
        if "trial_ids" not in t.user_attrs:  # killed while asking: nothing to resume
            assert not heirs and not t.user_attrs.get("trained_steps")
            continue
        assert len(heirs) == 1 and heirs[0].params == t.params
        assert heirs[0].state.name in ("COMPLETE", "PRUNED"), heirs[0]
        mine, theirs = t.user_attrs.get("trained_steps", []), heirs[0].user_attrs.get(
            "trained_steps", [])  # fmt: skip
        assert not set(mine) & set(theirs), (mine, theirs)  # no epoch trained twice
        if mine and theirs:  # the heir went on from the lost trial's last saved epoch
            resumed.append(t.number)
    # (a lost trial killed after all its results were written leaves its heir nothing to
    # train: the heir reuses them, as any repeated config does)
    assert not resumed or "resuming seeds [0, 1] after epoch" in "".join(
        p.read_text() for p in (out / "logs").glob("worker-*.log")
    )
    # --trials is a total over both calls: exactly 6 used, none failed, none waiting
    used = [t for t in trials if not t.user_attrs.get("lost")]
    assert len(used) == 6 and all(t.state.name in ("COMPLETE", "PRUNED") for t in used)
    # runs finished before the kill were not trained again: their result.json is untouched
    now = {p.parent.name: p for p in (out / "runs").glob("*/result.json")}
    for tid, (mtime, blob) in before.items():
        assert now[tid].stat().st_mtime_ns == mtime and now[tid].read_bytes() == blob, tid
    assert "stalled" not in run_cli("tune", str(out), "--status").stdout


def test_a_trial_is_pruned_and_its_runs_say_so(killed_and_resumed):
    out, *_ = killed_and_resumed
    trials = [t for t in load(out) if not t.user_attrs.get("lost")]
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    # every trial that learns nothing (lr 1e-6) is pruned; one that learns may be, if slow
    assert pruned and all(t in pruned for t in trials if t.params["lr"] == 1e-6
                          and not t.user_attrs.get("over_budget"))  # fmt: skip
    for t in pruned:
        for tid in t.user_attrs["trial_ids"]:
            folder = out / "runs" / tid
            result = json.loads((folder / "result.json").read_text())
            assert result["state"] == "pruned" and len(result["history"]) < 3
            assert not (folder / "checkpoint.pt").exists()


def test_no_tune_folder_holds_a_test_figure(killed_and_resumed):
    out, *_ = killed_and_resumed
    for tid, r in results(out).items():
        assert r["final_test_acc"] is None and r["test_images"] == 0, tid
        assert not any(k.startswith("test_") for row in r["history"] for k in row), tid
        assert r["config"]["test_eval"] == "never" and r["config"]["val_split"] == 256


def test_a_complete_trial_is_its_seeds_ordinary_runs(killed_and_resumed):
    from mnist_dist.config import TrainConfig

    out, *_ = killed_and_resumed
    done = [t for t in load(out) if t.state.name == "COMPLETE" and not t.user_attrs.get(
        "over_budget")]  # fmt: skip
    assert done
    for t in done:
        cfgs = [TrainConfig(step="family", epochs=3, val_split=256, batch_size=64,
                            test_eval="never", seed=s, **t.params) for s in (0, 1)]  # fmt: skip
        assert t.user_attrs["trial_ids"] == [c.trial_id() for c in cfgs]  # `train`'s ids
        accs = [results(out)[c.trial_id()]["final_val_acc"] for c in cfgs]
        assert t.value == pytest.approx(sum(accs) / 2) and t.user_attrs["val_accs"] == accs


def test_the_report_shows_top_trials_importances_history_and_fronts(killed_and_resumed):
    out, *_ = killed_and_resumed
    plots = out.parent / "plots"
    proc = run_cli("report", str(out), "--json", "--top", "2", "--plots", str(plots),
                   "--markdown", str(out.parent / "tune.md"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    values = [r["value"] for r in s["top"]]
    assert 1 <= len(values) <= 2 and values == sorted(values, reverse=True)
    assert all(r["params"] <= BUDGET and len(r["val_accs"]) == 2 for r in s["top"])
    assert [h["number"] for h in s["history"]] == sorted(h["number"] for h in s["history"])
    assert s["front_params"] and s["front_seconds"]
    assert {p.name for p in plots.iterdir()} >= {"history.png", "front_params.png",
                                                 "front_seconds.png"}  # fmt: skip
    assert "| rank |" in (out.parent / "tune.md").read_text()
    assert_one_line_error(run_cli("report", str(out), "--compare"), "--compare", "tune folder")


def test_promote_registers_a_step_and_its_test_sweep(killed_and_resumed, tmp_path):
    out, *_ = killed_and_resumed
    steps = tmp_path / "steps.toml"
    env = {"MNIST_DIST_STEPS_FILE": str(steps)}
    jobs = tmp_path / "jobs"
    proc = run_cli("tune", str(out), "--promote", "1", "--name", "step99", "--jobs", str(jobs),
                   env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    best = json.loads(run_cli("tune", str(out), "--status", "--json").stdout)["best"]
    models = json.loads(run_cli("models", "--json", env=env).stdout)
    assert {"name": "step99", "params": best["params"]}.items() <= next(
        m for m in models if m["name"] == "step99").items()  # fmt: skip
    plan = run_cli("sweep", str(jobs / "step99_test.toml"), "--dry-run", "--cluster", "local",
                   env=env)  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.count("step99-s") == 20 and "final" in plan.stdout  # seeds 100-119
    assert "step99-s100-" in plan.stdout and "step99-s119-" in plan.stdout
    # the step's recipe is the trial's: with the tune's runtime fields, only the name differs
    from mnist_dist.config import TrainConfig

    common = dict(seed=0, val_split=256, test_eval="never")
    trial = TrainConfig(step="family", epochs=3, batch_size=64, **best["config"], **common)
    code = (
        "import json, sys; from mnist_dist.config import TrainConfig; print(json.dumps("
        f"TrainConfig(step='step99', **{common!r}).resolve().to_dict()))"
    )
    got = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        check=True,
    )
    promoted = json.loads(got.stdout)
    assert promoted.pop("step") == "step99"
    assert promoted == {k: v for k, v in trial.resolve().to_dict().items() if k != "step"}
    again = run_cli("tune", str(out), "--promote", "1", "--name", "step99", env=env)
    assert_one_line_error(again, "step99", "registered")
    clash = run_cli("tune", str(out), "--promote", "1", "--name", "step98", "--test-seeds",
                    "0-3", "--jobs", str(jobs), env=env)  # fmt: skip
    assert_one_line_error(clash, "--test-seeds", "search seed")
    assert "step98" not in steps.read_text()


def test_over_budget_and_refused_trials_never_train_and_the_worker_goes_on(tmp_path, data_dir):
    """Every sample is over a 100-parameter budget; a sampled headline "ema" without an EMA
    is a config the trainer refuses (seed 0 draws it 4th): that trial fails, the next runs."""
    spec = tmp_path / "t_tune.toml"
    text = TUNE.format(max_params=100).replace("trials = 6", "trials = 4")
    spec.write_text(
        text.replace("[sampler]", 'headline = { choices = ["model", "ema"] }\n[sampler]')
    )
    out = tmp_path / "out"
    one_worker(spec, data_dir, "--out", str(out))
    trials = load(out)
    assert len(trials) == 4
    for t in trials:
        if t.params["headline"] == "model":
            assert t.user_attrs["over_budget"] and t.user_attrs["params"] > 100
        else:
            assert t.state.name == "FAIL" and "--headline ema needs an EMA" in t.user_attrs["error"]
    assert any(t.state.name == "FAIL" for t in trials) and not (out / "runs").exists()
    assert "1 failed, 3 over budget" in run_cli("tune", str(out), "--status").stdout
    report = run_cli("report", str(out))
    assert_one_line_error(report, "no complete trial")


@pytest.mark.parametrize("limit", ["0.001", '{ times = 1e-6, step = "step7" }'])
def test_a_trial_projected_over_max_seconds_is_pruned_at_epoch_2(tmp_path, data_dir, limit):
    """A limit in seconds, or a fraction of step7's time that the worker measures on its
    own CPU before its first trial (the trainer on the reference recipe, a few seconds)."""
    spec = tmp_path / "t_tune.toml"
    text = TUNE.format(max_params=BUDGET).replace("trials = 6", "trials = 1")
    spec.write_text(text.replace("max_params", f"max_seconds = {limit}\nmax_params"))
    out = tmp_path / "out"
    one_worker(spec, data_dir, "--out", str(out))
    (trial,) = load(out)
    seconds = trial.user_attrs["max_seconds"]
    assert trial.state.name == "PRUNED" and trial.user_attrs["too_slow"] > seconds
    assert trial.user_attrs["trained_steps"] == [1, 2]
    if limit == "0.001":
        assert seconds == 0.001 and not (out / "calibration").exists()
    else:  # 1e-6 x step7's seconds for the trial's work (2 seeds, 3 epochs, 1,792 images)
        (cal,) = (out / "calibration").glob("worker-0-*/calibration.txt")
        step7 = float(cal.read_text().split()[1])
        assert seconds == pytest.approx(1e-6 * step7, rel=1e-3) and 0.1 < step7 < 120
        (log,) = (out / "logs").glob("worker-*.log")
        assert f"max_seconds {seconds:.0f} = 1e-06 x step7's {step7:.0f} s" in log.read_text()
    for tid in trial.user_attrs["trial_ids"]:
        assert json.loads((out / "runs" / tid / "result.json").read_text())["state"] == "pruned"


def test_a_repeated_config_reuses_its_runs_and_says_so(tmp_path, data_dir):
    """A space of one point: the second trial samples the first's config; its runs already
    hold results, so it trains nothing and is flagged reused, with the same value."""
    spec = tmp_path / "t_tune.toml"
    text = TUNE.format(max_params=8000).replace("trials = 6", "trials = 2")  # 6,706 params
    text = text.replace("lr = { choices = [1e-6, 0.1] }", "lr = { choices = [0.1] }")
    spec.write_text(text.replace("width3 = { low = 8, high = 16 }", ""))
    out = tmp_path / "out"
    one_worker(spec, data_dir, "--out", str(out), "--trials", "1")
    first = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/result.json")}
    one_worker(out, data_dir, "--trials", "2")
    a, b = load(out)
    assert a.params == b.params and b.user_attrs["reused"] and not a.user_attrs.get("reused")
    assert a.value == b.value and "trained_steps" not in b.user_attrs  # nothing trained
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/result.json")} == first
    assert "(reused)" in run_cli("report", str(out)).stdout


def test_a_study_in_an_rdb_storage(tmp_path, data_dir):
    """--storage: the study in a SQLite database instead of the journal; workers open it."""
    spec = tmp_path / "t_tune.toml"
    spec.write_text(TUNE.format(max_params=100).replace("trials = 6", "trials = 2"))
    out, url = tmp_path / "out", f"sqlite:///{tmp_path / 'study.db'}"
    one_worker(spec, data_dir, "--out", str(out), "--storage", url)
    import optuna

    trials = optuna.load_study(study_name="t", storage=url).get_trials()
    assert len(trials) == 2 and all(t.user_attrs["over_budget"] for t in trials)
    assert not (out / "journal.log").exists()
    assert "2 of 2 trials used" in run_cli("tune", str(out), "--status").stdout


def test_a_tune_that_needs_the_test_set_is_refused(tmp_path, capsys):
    from .conftest import cli_error

    spec = tmp_path / "t_tune.toml"
    spec.write_text(
        TUNE.format(max_params=BUDGET).replace(
            "val_split = 256", 'val_split = 256\ntest_eval = "final"'
        )
    )
    line = cli_error(capsys, "tune", str(spec), "--cluster", "local", "--out", str(tmp_path / "o"))
    assert "test_eval" in line and "never" in line
    assert not (tmp_path / "o").exists()
