"""Two-node tests on a real SLURM cluster of their own (``local_slurm.sh start --nodes 2``).

    python -m pytest tests/test_multinode.py -q     # as root

The module starts a cluster of its own (conftest.own_cluster: its own slurm.conf, state
folder, ports 6917/6918, cluster name, partition, and namespaces on 10.77.1.0/24), apart
from the default cluster and from tests/test_slurm_cluster.py's; every SLURM command here
goes to it through ``SLURM_CONF``, and the module stops it at the end.
Skipped, with the reason, when not root or when namespaces cannot be made here.
Data: a tiny IDX set (2,048 training images), so that an epoch takes seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
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

ENV = cluster_env("mdtest2", partition="two", ctld_port=6917, net="10.77.1")
STATE = Path(ENV["MNIST_SLURM_STATE"])
CLUSTER = ENV["MNIST_SLURM_CLUSTER"]
NODES = [f"{CLUSTER}-n0", f"{CLUSTER}-n1"]
TOML = str(REPO / "jobs" / "smoke_2node.toml")


def _why_not() -> str | None:
    why = why_no_local_cluster()
    if why:
        return why
    missing = [t for t in ("unshare", "nsenter", "ip") if shutil.which(t) is None]
    if missing:
        return f"{', '.join(missing)} not found"
    probe = subprocess.run(["unshare", "--net", "--uts", "true"], capture_output=True, text=True)
    if probe.returncode:
        return f"cannot make namespaces here: {probe.stderr.strip()}"
    return None


pytestmark = [pytest.mark.slurm, pytest.mark.skipif(bool(_why_not()), reason=_why_not() or "")]


def script(*args: str) -> subprocess.CompletedProcess:
    return local_slurm(*args, env=ENV)


def slurm(*cmd: str) -> str:
    """A SLURM client command against the test cluster (SLURM_CONF named explicitly)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ENV})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """The two-node cluster, with every command of the module pointed at it."""
    with own_cluster(ENV, "--nodes", "2"):
        yield


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_tiny_mnist(tmp_path_factory.mktemp("data"), n_train=2048)


def torchrun_reference(data_dir: Path, out: Path) -> subprocess.Popen:
    """jobs/smoke_2node.toml's trial as one node's two processes (gloo), started now."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mnist_dist.train", "--step", "step2", "--seed", "0", "--epochs", "3",
           "--train-limit", "2000", "--batch-size", "32", "--optimizer", "adamw", "--lr", "0.003",
           "--cpu", "--threads", "1", "--no-progress", "--data-dir", str(data_dir),
           "--out", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def results(out: Path) -> list[dict]:
    record = json.loads((out / "sweep.json").read_text())
    return [json.loads((out / t["trial_id"] / "result.json").read_text()) for t in record["trials"]]


@pytest.fixture(scope="module")
def two_node(tmp_path_factory, data_dir) -> dict:
    """jobs/smoke_2node.toml run to the end, and the torchrun reference run beside it."""
    tmp = tmp_path_factory.mktemp("two_node")
    ref = torchrun_reference(data_dir, tmp / "ref")
    proc = run_cli(
        *("sweep", TOML, "--cluster", "slurm", "--out", str(tmp / "s")),
        *("--wait", "--poll", "1", "--data-dir", str(data_dir)),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ref.wait(timeout=600) == 0, ref.stderr.read()
    (result,) = results(tmp / "s")
    return dict(result=result, ref=json.loads((tmp / "ref" / "result.json").read_text()))


def test_two_idle_nodes_each_declare_half_the_machine():
    rows = [line.split() for line in slurm("sinfo", "-h", "-N", "-o", "%N %t %c %P").splitlines()]
    assert sorted(r[0] for r in rows) == NODES and {r[1] for r in rows} <= {"idle", "mix", "alloc"}
    machine = subprocess.run(["slurmd", "-C"], capture_output=True, text=True).stdout
    cpus = int(machine.split(" CPUs=")[1].split()[0])
    assert {int(r[2]) for r in rows} == {cpus // 2} and {r[3] for r in rows} == {"two*"}
    hosts = Path("/etc/hosts").read_text()
    assert f"10.77.1.1 {NODES[0]} " in hosts and f"10.77.1.2 {NODES[1]} " in hosts
    again = script("start", "--nodes", "2")  # idempotent: a running cluster is only checked
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("local_slurm: cluster up") and again.stdout.count("\n") == 1
    bad = script("start", "--nodes", "0")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "--nodes" in bad.stderr


def test_two_node_trial_runs_on_both_nodes_and_matches_one_node_two_processes(two_node):
    got, want = two_node["result"], two_node["ref"]
    assert got["world_size"] == want["world_size"] == 2
    assert sorted(got["hosts"]) == NODES  # one process on each node, names gathered by rank
    assert got["trial_id"] == want["trial_id"]  # the same config, the same identity
    assert got["threads"] == 1  # cpus_per_task
    assert len(got["history"]) == 3 and got["history"][-1]["train_acc"] > 50  # it learns
    for a, b in zip(timeless(got["history"]), timeless(want["history"]), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], abs=1e-5), (a["epoch"], key)


def test_job_array_trials_run_on_both_nodes(tmp_path, data_dir):
    """jobs/smoke.toml's 4 one-CPU trials, 2 at a time: one node each, as result.json says."""
    out = tmp_path / "s"
    proc = run_cli(
        *("sweep", str(REPO / "jobs" / "smoke.toml"), "--cluster", "slurm", "--out", str(out)),
        *("--wait", "--poll", "1", "--data-dir", str(data_dir)),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    done = results(out)
    assert len(done) == 4 and all(r["world_size"] == 1 for r in done)
    assert sorted({r["hosts"][0] for r in done}) == NODES
    logs = "".join(p.read_text() for p in (out / "logs").rglob("*.out"))
    assert all(f"hostname={node}" in logs for node in NODES)  # submitit's JobEnvironment


def test_sbatch_accelerate_cpu_mode_on_two_nodes(tmp_path, data_dir):
    """srun starts a launcher per node (torchrun in CPU mode), and --threads is the node's
    CPUs per process whatever OMP_NUM_THREADS the submitting shell had."""
    cpus = int(slurm("sinfo", "-h", "-N", "-n", NODES[0], "-o", "%c").strip())
    procs = 2 if cpus >= 2 else 1  # processes per node; a one-CPU node runs one
    out = tmp_path / "run"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",  # torchrun, as in a venv
        "PYTHONPATH": str(REPO),
        "WANDB_MODE": "disabled",
        "MNIST_DIST_CPU": "1",
        "MNIST_DIST_PROCS_PER_NODE": str(procs),
        "OMP_NUM_THREADS": "3",  # stray: must not decide the threads
    }
    cmd = ["sbatch", "--wait", "--nodes", "2", "--gpus-per-node", "0", "--cpus-per-task",
           str(cpus), "--mem", "1G", "--output", str(tmp_path / "%j.out"),
           str(REPO / "launch" / "sbatch_accelerate.sh"), "--step", "step2", "--epochs", "1",
           "--train-limit", "512", "--data-dir", str(data_dir), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    log = "".join(p.read_text() for p in tmp_path.glob("*.out"))
    assert proc.returncode == 0, proc.stderr + log
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2 * procs and sorted(set(result["hosts"])) == NODES
    assert result["threads"] == max(1, cpus // procs)


def rank_pid(job_id: str, rank: int) -> int | None:
    """The pid of the job's task ``rank`` (SLURM_PROCID), found through /proc (the nodes
    share this machine's process namespace); None while it has not started."""
    want = (f"SLURM_JOB_ID={job_id}".encode(), f"SLURM_PROCID={rank}".encode())
    for proc in Path("/proc").iterdir():
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            cmd = (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if all(w in env for w in want) and b"submitit" in cmd:
            return int(proc.name)
    return None


def test_a_lost_rank_ends_its_trial_at_once_and_error_txt_names_the_cause(tmp_path, data_dir):
    """SIGKILL one rank of a two-node trial mid-training: the other does not wait for the
    job's time limit (20 min here) in a collective. srun --kill-on-bad-exit ends the step,
    the job fails without a requeue, and error.txt says which rank saw what."""
    f = tmp_path / "long.toml"
    f.write_text(Path(TOML).read_text().replace("epochs = 3", "epochs = 50"))
    out = tmp_path / "s"
    args = ("sweep", str(f), "--cluster", "slurm", "--out", str(out), "--data-dir", str(data_dir))
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (job,) = json.loads((out / "sweep.json").read_text())["jobs"]
    trial = out / job["trial_ids"][0]
    deadline = time.time() + 300
    while not (trial / "checkpoint.pt").is_file():  # epoch 1 is saved: both ranks train
        assert time.time() < deadline, "no checkpoint after 300 s"
        time.sleep(0.2)
    victim = rank_pid(job["job_id"], 1)
    assert victim is not None
    os.kill(victim, 9)
    killed = time.time()
    while slurm("squeue", "-h", "-j", job["job_id"]).strip():
        assert time.time() - killed < 120, "the job outlived its lost rank by 2 minutes"
        time.sleep(0.5)
    took = time.time() - killed
    state = json.loads(run_cli("status", str(out), "--json").stdout)["trials"][0]
    assert state["state"] == "failed" and not (trial / "result.json").exists()
    error = (trial / "error.txt").read_text().splitlines()
    assert re.fullmatch(rf"rank \d on {CLUSTER}-n\d \(job {job['job_id']}\) failed:", error[0])
    assert state["error"].startswith(error[0].removesuffix(" failed:"))
    log = "".join(p.read_text() for p in (out / "logs").rglob("*.out"))
    assert "Requeued" not in log  # a failure, not a preemption: not requeued
    print(f"the job ended {took:.1f} s after rank 1 was killed")


def test_stop_leaves_no_namespace_link_daemon_or_hosts_entry():
    pids = [
        line.split()[1]
        for line in (STATE / "owned").read_text().splitlines()
        if line.startswith(("slurmd ", "slurmctld "))
    ]
    assert len(pids) == 3  # slurmctld and a slurmd per node; munged is the shared one
    proc = script("stop")
    assert proc.returncode == 0, proc.stderr
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert CLUSTER not in netns and CLUSTER not in links
    assert CLUSTER not in Path("/etc/hosts").read_text()
    assert not (STATE / "owned").exists()
    assert not (STATE / "slurm.conf").exists()  # its addresses are gone: no client may use it
    assert script("stop").stdout.strip() == "local_slurm: nothing to stop"
