"""Integration tests against a real SLURM cluster: a one-node cluster of the module's own.

    python -m pytest tests/test_slurm_cluster.py -q     # as root

They submit ``jobs/smoke.toml`` and check every trial's result, break one trial and rerun,
and preempt a running trial. The cluster (conftest.own_cluster: ports 6827/6828, name
mdtest1, partition one) is apart from the default one, so jobs queued there (a sweep) never
hold these tests up, and it starts with an empty queue. Skipped, with the reason, when not
root or without SLURM. Data: the tiny IDX set (jobs inherit the data folder).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import (
    REPO,
    cluster_env,
    local_slurm,
    make_tiny_mnist,
    own_cluster,
    run_cli,
    timeless,
    why_no_local_cluster,
)
from .test_sweep import TINY

ENV = cluster_env("mdtest1", partition="one", ctld_port=6827, net="10.77.2")
pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(bool(why_no_local_cluster()), reason=why_no_local_cluster() or ""),
]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    with own_cluster(ENV):
        yield


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """The tiny IDX set with the smoke sweep's 2,000 training images and 256 test images:
    these tests check jobs, states and resumes, not accuracy, and scoring real MNIST's
    10,000 test images every epoch of every trial only cost time."""
    return make_tiny_mnist(tmp_path_factory.mktemp("data"), n_train=2048, n_test=256)


def status(out: Path) -> dict:
    proc = run_cli("status", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, data_dir) -> Path:
    out = tmp_path_factory.mktemp("smoke") / "s"
    proc = run_cli(
        *("sweep", str(REPO / "jobs" / "smoke.toml"), "--cluster", "slurm", "--out", str(out)),
        *("--wait", "--poll", "1", "--data-dir", str(data_dir)),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_smoke_sweep_every_trial_done_and_rerun_submits_nothing(smoke, data_dir):
    st = status(smoke)
    assert st["total"] == 4 and st["counts"]["done"] == 4, st
    record = json.loads((smoke / "sweep.json").read_text())
    assert {(t["config"]["step"], t["config"]["seed"]) for t in record["trials"]} == {
        (s, n) for s in ("step3", "step4") for n in (0, 1)
    }
    # One array task per trial, its id recorded against the trial.
    assert sorted(j["trial_ids"][0] for j in record["jobs"]) == sorted(
        t["trial_id"] for t in record["trials"]
    )
    assert len({j["job_id"].split("_")[0] for j in record["jobs"]}) == 1
    for t in record["trials"]:
        result = json.loads((smoke / t["trial_id"] / "result.json").read_text())
        assert result["trial_id"] == t["trial_id"] and result["config"] == t["config"]
        assert len(result["history"]) == 1 and result["train_images"] <= 2000
        assert json.loads((smoke / t["trial_id"] / "config.json").read_text()) == t["config"]

    proc = run_cli("sweep", str(REPO / "jobs" / "smoke.toml"), "--out", str(smoke))
    assert proc.returncode == 0, proc.stderr
    assert "nothing to submit" in proc.stdout and proc.stdout.count("skip (done)") == 4
    assert json.loads((smoke / "sweep.json").read_text())["jobs"] == record["jobs"]


def test_failed_trial_is_reported_and_only_it_is_resubmitted(smoke, data_dir):
    """Break one trial (a corrupt checkpoint), rerun: only it runs, fails, and is reported."""
    args = ("sweep", str(REPO / "jobs" / "smoke.toml"), "--out", str(smoke), "--wait")
    args += ("--poll", "1", "--data-dir", str(data_dir))
    victim = status(smoke)["trials"][-1]["trial_id"]
    # A job that wrote its result may still be COMPLETING for a moment: a trial whose job
    # squeue shows alive is never resubmitted, so break it only once its job has left.
    deadline = time.time() + 60
    while subprocess.run(["squeue", "-h", "-t", "RUNNING,COMPLETING", "-o", "%i"],
                         capture_output=True, text=True).stdout.strip():  # fmt: skip
        assert time.time() < deadline, "smoke jobs still running after 60 s"
        time.sleep(0.5)
    (smoke / victim / "result.json").unlink()
    (smoke / victim / "checkpoint.pt").write_bytes(b"corrupt")
    n_jobs = len(json.loads((smoke / "sweep.json").read_text())["jobs"])

    proc = run_cli(*args, timeout=240)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.count("submit\n") == 1 and proc.stdout.count("skip (done)") == 3
    st = status(smoke)
    assert st["counts"] == dict(st["counts"], done=3, failed=1)
    failed = next(t for t in st["trials"] if t["state"] == "failed")
    assert failed["trial_id"] == victim and "truncated or not a checkpoint" in failed["error"]
    assert len(json.loads((smoke / "sweep.json").read_text())["jobs"]) == n_jobs + 1

    (smoke / victim / "checkpoint.pt").unlink()
    proc = run_cli(*args, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert status(smoke)["counts"]["done"] == 4
    assert not (smoke / victim / "error.txt").exists()


PREEMPT = """name = "preempt"
[grid]
seed = [5]
[defaults]
step = "step7"  # OneCycle and augmentation: their state must survive the requeue too
epochs = 3
train_limit = 2000
[resources]
cpus_per_task = 1
time_min = 20   # minutes: far from the limit, so submitit reads the signal as preemption
"""


def test_preempted_trial_requeues_and_ends_with_uninterrupted_history(tmp_path, data_dir):
    f = tmp_path / "preempt.toml"
    f.write_text(PREEMPT)
    out = tmp_path / "s"
    proc = run_cli("sweep", str(f), "--out", str(out), "--data-dir", str(data_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (job,) = json.loads((out / "sweep.json").read_text())["jobs"]
    trial = out / job["trial_ids"][0]
    # The same config, uninterrupted, as the reference (runs meanwhile, on the other core).
    ref = subprocess.Popen(
        [*_train_cmd(data_dir, tmp_path / "ref")],
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (trial / "checkpoint.pt").is_file():  # epoch 1 is saved
        assert time.time() < deadline, "no checkpoint after 120 s"
        time.sleep(0.2)
    assert not (trial / "result.json").exists()
    # What SLURM does on preemption (and submitit's own _interrupt helper): TERM, then USR2.
    subprocess.run(["scancel", "--signal", "TERM", job["job_id"]], check=True)
    subprocess.run(["scancel", "--signal", "USR2", job["job_id"]], check=True)

    proc = run_cli("sweep", str(f), "--out", str(out), "--wait", "--poll", "1", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skip (" in proc.stdout  # the requeued job was still queued: not submitted twice
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    log = "".join(p.read_text() for p in (out / "logs" / job["job_id"]).glob("*.out"))
    # Requeued: the same job started twice and resumed. (submitit's "Requeued job" line is
    # not proof either way: SLURM may end the step, and its `scontrol requeue`, first.)
    assert "this job is preempted" in log and log.count("Starting with JobEnvironment") == 2
    assert "resuming" in log and "after epoch" in log
    got = json.loads((trial / "result.json").read_text())["history"]
    want = json.loads((tmp_path / "ref" / "result.json").read_text())["history"]
    assert len(got) == 3 and timeless(got) == timeless(want)


def _train_cmd(data_dir: Path, out: Path) -> list[str]:
    import sys

    return [
        *(sys.executable, "-m", "mnist_dist.train", "--step", "step7", "--seed", "5"),
        *("--epochs", "3", "--train-limit", "2000", "--cpu", "--no-progress"),
        *("--data-dir", str(data_dir), "--out", str(out)),
    ]


def test_a_restarted_cluster_keeps_its_queue_unless_started_fresh():
    """slurmctld saves its queue: started again (the machine went down) it still holds its
    jobs, as a sweep needs; --fresh, as test clusters start, empties it, whether the cluster
    was down or still running (a killed test run)."""

    def queue_after(*commands: tuple[str, ...]) -> list[str]:
        for args in commands:
            proc = local_slurm(*args, env=ENV)
            assert proc.returncode == 0, proc.stdout + proc.stderr
        squeue = ["squeue", "-h", "-o", "%i"]
        return subprocess.run(squeue, capture_output=True, text=True, check=True).stdout.split()

    def held_job() -> str:
        held = ["sbatch", "--parsable", "--hold", "--output", "/dev/null", "--wrap", "true"]
        return subprocess.run(held, capture_output=True, text=True, check=True).stdout.strip()

    job = held_job()
    assert job in queue_after(("stop",), ("start",))
    assert queue_after(("start", "--fresh")) == []  # it was running
    held_job()
    assert queue_after(("stop",), ("start", "--fresh")) == []  # it was down


def test_the_munge_key_is_its_daemons_alone():
    """After a start (this module's), whichever branch made or found the key: 0400, owned by
    the user munged runs as."""
    import pwd

    key = os.stat("/etc/munge/munge.key")
    daemon = "munge" if "munge" in {p.pw_name for p in pwd.getpwall()} else "root"
    assert oct(key.st_mode & 0o777) == "0o400" and pwd.getpwuid(key.st_uid).pw_name == daemon


def test_a_state_folder_another_user_made_is_refused(tmp_path):
    """The state folder holds what root's daemons read: one made first by another user
    (here uid 65534, nobody) is refused in one line, and nothing starts."""
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)
    env = cluster_env("mdtestx", partition="x", ctld_port=6837, net="10.77.3")
    env.update(MNIST_SLURM_STATE=str(state), SLURM_CONF=str(state / "slurm.conf"))
    proc = local_slurm("start", env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "belongs to uid 65534, not root" in proc.stderr
    assert list(state.iterdir()) == []  # nothing written there


# test_sweep's tiny two-seed sweep, its jobs held: queued, never started, so they can be counted
HELD = 'name = "held"\n' + TINY + "sbatch_extra = { hold = true }\n"


def test_a_sweep_killed_between_sbatch_and_its_record_never_submits_twice(
    tmp_path, data_dir, monkeypatch, capsys
):
    from mnist_dist.cli import main
    from mnist_dist.sweeps import submit

    f = tmp_path / "held.toml"
    f.write_text(HELD)
    out = tmp_path / "s"
    args = ["sweep", str(f), "--cluster", "slurm", "--out", str(out), "--data-dir", str(data_dir)]
    real = submit.submit_array

    def submitted_then_killed(executor, trials):
        real(executor, trials)  # sbatch returned: the jobs are queued...
        raise KeyboardInterrupt  # ...and the command dies before it records them

    monkeypatch.setattr(submit, "submit_array", submitted_then_killed)
    with pytest.raises(SystemExit):
        main(args)
    monkeypatch.setattr(submit, "submit_array", real)
    record = json.loads((out / "sweep.json").read_text())
    assert record["jobs"] == [] and len(record["intents"]) == 1  # what the kill left

    def queued() -> list[str]:
        cmd = ["squeue", "-h", "-r", "-n", "held", "-o", "%i"]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()

    jobs = queued()
    assert len(jobs) == 2
    capsys.readouterr()
    main(args)  # the rerun
    stdout = capsys.readouterr().out
    assert "an interrupted submission" in stdout and stdout.count("skip (queued)") == 2
    assert "nothing to submit" in stdout
    assert sorted(queued()) == sorted(jobs)  # still two jobs: none submitted twice
    record = json.loads((out / "sweep.json").read_text())
    assert "intents" not in record and sorted(j["job_id"] for j in record["jobs"]) == sorted(jobs)
    subprocess.run(["scancel", *jobs], check=True)


def test_two_slurm_workers_share_a_tune_and_a_killed_worker_loses_nothing(tmp_path, data_dir):
    """Issue #23 on the real cluster: a 2-task array pulls trials from one journal; one task
    is cancelled mid-trial; the next `tune` call hands its trial on, and it resumes."""
    from .test_tune import TUNE, config_hash, just_saved_pack, load

    spec = tmp_path / "t_tune.toml"
    spec.write_text(TUNE.format(max_params=6600) + "cpus_per_task = 1\nmem_gb = 1\ntime_min = 10\n")
    out = tmp_path / "out"
    args = ("--cluster", "slurm", "--data-dir", str(data_dir))
    proc = run_cli("tune", str(spec), *args, "--workers", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = [w["job"] for w in json.loads((out / "tune.json").read_text())["workers"]]
    assert len(jobs) == 2 and jobs[0].split("_")[0] == jobs[1].split("_")[0]  # one array
    found = {}

    def trial_of(pack: Path) -> bool:  # the running trial whose pack this is
        running = [t for t in load(out) if t.state.name == "RUNNING"]
        found["trial"] = next((t for t in running if pack.name.startswith(config_hash(t))), None)
        return found["trial"] is not None

    assert just_saved_pack(out, 180, trial_of), "no pack saved an epoch within 180 s"
    victim = found["trial"]
    # SIGKILL its process, as the OOM killer or a lost node would (scancel sends TERM, which
    # submitit bypasses, and leaves KillWait for the trial to finish)
    holder = (out / "locks" / f"trial-{victim.number}").read_text()  # "pid N on HOST"
    os.kill(int(holder.split()[1]), signal.SIGKILL)
    proc = run_cli("tune", str(out), *args, "--workers", "1", "--wait", "--poll", "1", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    deadline = time.time() + 300
    while subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout:
        assert time.time() < deadline, "workers still queued after 300 s"
        time.sleep(1)
    trials = load(out)
    lost = [t for t in trials if t.user_attrs.get("lost")]
    assert [t.number for t in lost] == [victim.number]
    (heir,) = [h for h in trials if h.user_attrs.get("resumes") == victim.number]
    assert heir.params == victim.params and heir.state.name in ("COMPLETE", "PRUNED")
    mine, theirs = victim.user_attrs["trained_steps"], heir.user_attrs.get("trained_steps", [])
    assert mine and not set(mine) & set(theirs)  # resumed after its last saved epoch
    used = [t for t in trials if not t.user_attrs.get("lost")]
    assert len(used) == 6 and all(t.state.name in ("COMPLETE", "PRUNED") for t in used)
    assert len({t.user_attrs["job"] for t in trials}) == 3  # both tasks, and the third worker
    # A config sampled twice (2 lr choices x 9 widths) trains once: the others reuse it.
    ids = [tuple(t.user_attrs["trial_ids"]) for t in used if "trial_ids" in t.user_attrs]
    for key in set(ids):
        same = [t for t in used if tuple(t.user_attrs.get("trial_ids", ())) == key]
        assert sum(not t.user_attrs.get("reused") for t in same) <= 1, key
