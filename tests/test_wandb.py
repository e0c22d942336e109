"""W&B: the trainer's offline run, resume, a broken W&B, the API report path, the summary run.

    PYTHONPATH=. python -m pytest tests/test_wandb.py -q

Offline runs are read back from their ``run-<id>.wandb`` file with W&B's own protobuf
schema (``wandb.proto.wandb_internal_pb2.Record``); wandb 0.31 has no Python reader.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_dist.training.tracking import wandb_state

from .conftest import assert_one_line_error, run_cli
from .synthetic import fake_result, write_sweep

BLOCK = 32 * 1024  # W&B's transaction log: LevelDB-style 32 KiB blocks, 7-byte headers


def wandb_records(path: Path) -> list:
    """Every Record in a .wandb file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    records, pos, chunks = [], 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST piece of a record
            rec = pb.Record()
            rec.ParseFromString(chunks)
            records.append(rec)
            chunks = b""
    return records


def _put(into: dict, item) -> None:
    """W&B flattens nested values into (nested_key path, json) items: rebuild the dicts."""
    keys = [item.key] if item.key else list(item.nested_key)
    for k in keys[:-1]:
        into = into.setdefault(k, {})
    into[keys[-1]] = json.loads(item.value_json)


def read_offline_run(run_dir: Path) -> dict:
    """run record fields, merged config, merged summary and history rows of one offline run."""
    (log,) = run_dir.glob("run-*.wandb")
    out = dict(config={}, summary={}, history=[])
    for rec in wandb_records(log):
        kind = rec.WhichOneof("record_type")
        if kind == "run":  # wandb.init(config=...) sends the config with the run record
            out["run"] = rec.run
            for u in rec.run.config.update:
                _put(out["config"], u)
        elif kind == "config":
            for u in rec.config.update:
                _put(out["config"], u)
        elif kind == "summary":
            for u in rec.summary.update:
                _put(out["summary"], u)
        elif kind == "history":
            row: dict = {}
            for item in rec.history.item:
                _put(row, item)
            out["history"].append(row)
    return out


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """No real credentials or settings leak in: W&B's home and config live in tmp_path."""
    for var in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_ENTITY", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    return dict(HOME=str(home), WANDB_CONFIG_DIR=str(home / "cfg"), WANDB_CACHE_DIR=str(home))


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--step", "step4", "--seed", "3", "--epochs", "2", "--train-limit", "256"] + [
        "--data-dir", str(data), "--out", str(out), "--no-progress", *extra
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("wandb_had", [1, 0], ids=["preempted-in-epoch-2", "preempted-before-log"])
def test_offline_run_carries_group_config_tags_summary_and_resumes(
    tiny_mnist, tmp_path, wandb_env, wandb_had
):
    out = tmp_path / "run"
    env = dict(wandb_env, WANDB_MODE="offline")
    args = train_args(tiny_mnist, out, "--wandb", "offline", "--wandb-group", "smoke")
    proc = run_cli(*args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr
    result = json.loads((out / "result.json").read_text())
    state = json.loads((out / "wandb_run.json").read_text())
    run_id = state["run_id"]
    assert state["logged_epoch"] == 2
    (first,) = sorted((out / "wandb").glob("offline-run-*"))
    assert first.name.endswith(run_id)
    got = read_offline_run(first)
    run = got["run"]
    assert (run.run_id, run.project, run.run_group) == (run_id, "mnist-dist", "smoke")
    assert (run.job_type, run.display_name, list(run.tags)) == (
        "step4",
        "step4-s3",
        ["step4", "seed3"],
    )
    assert {k: got["config"][k] for k in result["config"]} == result["config"]
    assert got["config"]["trial_id"] == result["trial_id"]
    assert got["config"]["config_hash"] == result["config_hash"]
    for key in ("final_test_acc", "best_test_acc", "params", "first_epoch_at_target"):
        assert got["summary"][key] == result[key], key
    logged = {h["epoch"]: h["test_acc"] for h in got["history"] if "epoch" in h}
    assert logged == {h["epoch"]: h["test_acc"] for h in result["history"]}
    # W&B's own CLI recognises it as a run to sync later
    sync = subprocess.run(
        [sys.executable, "-m", "wandb", "sync", "--dry-run", str(first)],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=120,
    )  # fmt: skip
    assert sync.returncode == 0 and f"run-{run_id}.wandb" in sync.stdout + sync.stderr

    # Requeued after epoch 1: the checkpoint holds one epoch and there is no result yet.
    # W&B got epoch 1 (preempted during epoch 2), or not even that: the checkpoint is
    # saved first, so a preemption may fall between it and the W&B log.
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    ckpt["history"], ckpt["epoch"] = ckpt["history"][:1], 1
    torch.save(ckpt, out / "checkpoint.pt")
    (out / "result.json").unlink()
    (out / "wandb_run.json").write_text(json.dumps(dict(state, logged_epoch=wandb_had)))
    proc = run_cli(*args, "--resume", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "resuming" in proc.stdout
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(run_id) for r in runs)
    again = read_offline_run(runs[1])
    assert again["run"].run_id == run_id and again["run"].run_group == "smoke"
    # continues: each epoch reaches W&B exactly once over the two runs
    assert [h["epoch"] for h in again["history"] if "epoch" in h] == [1, 2][wandb_had:]
    assert (
        again["summary"]["final_test_acc"]
        == json.loads((out / "result.json").read_text())["final_test_acc"]
    )


def test_run_id_is_kept_on_resume_and_new_when_starting_over(tmp_path):
    first = wandb_state(tmp_path, resume=False)
    assert first["logged_epoch"] == 0
    assert wandb_state(tmp_path, resume=True) == first
    fresh = wandb_state(tmp_path, resume=False)
    saved = json.loads((tmp_path / "wandb_run.json").read_text())
    assert fresh["run_id"] != first["run_id"] and saved == fresh


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: connections are refused


@pytest.mark.slow
@pytest.mark.parametrize("broken", ["no key", "server unreachable"])
def test_broken_wandb_warns_once_and_training_completes(tiny_mnist, tmp_path, wandb_env, broken):
    env = dict(wandb_env, WANDB_MODE="online")
    if broken == "server unreachable":
        env.update(
            WANDB_API_KEY="x" * 40,
            WANDB_BASE_URL=f"http://127.0.0.1:{closed_port()}",
            WANDB_INIT_TIMEOUT="5",  # seconds; the default is 30
        )
    out = tmp_path / "run"
    t0 = time.monotonic()
    proc = run_cli(*train_args(tiny_mnist, out, "--wandb", "online"), env=env, timeout=300)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert (out / "result.json").is_file()
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("mnist-dist: warning")]
    assert len(warnings) == 1 and "tracking is off" in warnings[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert elapsed < 120, f"training with a broken W&B took {elapsed:.0f} s"


class FakeRun:
    """The attributes of ``wandb.apis.public.Run`` that the report reads."""

    def __init__(self, result: dict, group: str, state="finished", job_type=None, created=1):
        from mnist_dist.rundir import result_config

        cfg = result_config(result)
        self.id = f"{result['trial_id'][-6:]}{created:02d}"
        self.name = f"{result['step']}-s{result['seed']}"
        self.group, self.state = group, state
        self.job_type = job_type or result["step"]
        self.created_at = f"2026-11-{created:02d}T10:00:00Z"
        # what the trainer sends: the resolved config, its trial id and config hash
        self.config = dict(cfg.to_dict(), trial_id=cfg.trial_id(), config_hash=cfg.config_hash())
        self.summary_metrics = {k: result[k] for k in ("final_test_acc", "best_test_acc", "params")}
        self.summary_metrics["first_epoch_at_target"] = result["first_epoch_at_target"]
        self._history = [dict(h, _step=h["epoch"]) for h in result["history"]]

    def scan_history(self, keys=None):
        return [h for h in self._history if all(k in h for k in keys or [])]


class FakeApi:
    """Stands in for ``wandb.Api``: serves FakeRuns matching a group filter (exact or
    ``$regex``, the MongoDB-style query W&B's public API takes) and records the query."""

    runs_all: list[FakeRun] = []
    queries: list = []

    def __init__(self, overrides=None, timeout=None, api_key=None):
        self.timeout = timeout

    def runs(self, path, filters=None, **kwargs):
        import re

        FakeApi.queries.append((path, filters))

        def match(run, cond):
            want = cond["group"]
            return (
                re.search(want["$regex"], run.group)
                if isinstance(want, dict)
                else run.group == want
            )

        return iter(r for r in FakeApi.runs_all if any(match(r, c) for c in filters["$or"]))


def test_report_from_the_wandb_api_matches_the_folder_report(tmp_path, monkeypatch, capsys):
    import wandb

    from mnist_dist.report.report import report_main

    # The stand-in answers instead of the server; the key only passes the local check.
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    rng = np.random.default_rng(7)
    results = [
        fake_result(step, seed, list(rng.normal([99.0, 99.4], 0.08)), params)
        for step, params in (("step3", 9_000), ("step4", 7_074))
        for seed in range(3)
    ]
    crashed = fake_result("step4", 9, [50.0], 7_074)
    stale = dict(results[3], final_test_acc=11.0)  # step4 seed 0, an older run of the trial
    FakeApi.runs_all = [FakeRun(r, f"smoke/{r['step']}", created=5) for r in results] + [
        FakeRun(stale, "smoke/step4", created=2),  # the same trial id: counted once, newest
        FakeRun(crashed, "smoke/step4", state="crashed"),
        FakeRun(results[0], "smoke", job_type="report"),
        FakeRun(results[0], "smokey/step3"),  # another sweep whose name starts alike
    ]
    monkeypatch.setattr(wandb, "Api", FakeApi)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    report_main(["--wandb", "me/mnist", "--group", "smoke", "--json"])
    captured = capsys.readouterr()
    from_api = json.loads(captured.out)
    assert FakeApi.queries[-1][0] == "me/mnist"
    assert "seed 0 of step4 appears twice" in captured.err
    assert [(m["status"], m["trial_id"].split()[0]) for m in from_api["missing"]] == [
        ("crashed", "step4-s9")
    ]
    report_main([str(write_sweep(tmp_path / "s", results)), "--json"])
    from_dir = json.loads(capsys.readouterr().out)
    for a, b in zip(from_api["groups"], from_dir["groups"], strict=True):
        for key in ("step", "n", "params", "mean", "variance", "std", "sem", "ci95", "min", "max"):
            assert a[key] == pytest.approx(b[key]), key
        assert a["n_at_target"] == b["n_at_target"] and a["n"] == 3  # the report run is skipped
        assert a["config_hash"] == b["config_hash"]
        x = [r["final_test_acc"] for r in results if r["step"] == a["step"]]
        assert a["mean"] == pytest.approx(np.mean(x))


def test_log_to_wandb_writes_a_summary_run_with_table_and_plots(tmp_path, wandb_env):
    results = [
        fake_result(s, seed, [99.1, 99.45 - seed / 10], 7_074)
        for s in ("step4",)
        for seed in range(3)
    ]
    root = write_sweep(tmp_path / "s", results, name="smoke")
    proc = run_cli("report", str(root), "--log-to-wandb", env=dict(wandb_env, WANDB_MODE="offline"))
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (root / "wandb").glob("offline-run-*")
    got = read_offline_run(run_dir)
    assert (got["run"].run_group, got["run"].job_type) == ("smoke", "report")
    (row,) = [h for h in got["history"] if "report/groups" in h]
    assert row["report/groups"]["_type"] == "table-file"
    table = json.loads((run_dir / "files" / row["report/groups"]["path"]).read_text())
    assert table["data"][0][0] == "step4" and table["data"][0][2] == "3"
    for name in ("test_acc_per_epoch", "final_acc_vs_params"):
        assert row[f"report/{name}"]["_type"] == "image-file"
        assert (run_dir / "files" / row[f"report/{name}"]["path"]).stat().st_size > 10_000
    assert got["summary"]["step4/n"] == 3
    assert got["summary"]["step4/mean"] == pytest.approx(np.mean([99.45, 99.35, 99.25]))


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--wandb", "me/mnist", "--group", "smoke"], "no W&B API key"),
        (["--wandb", "a/b/c", "--group", "smoke"], "expects ENTITY/PROJECT"),
        (["--wandb", "me/mnist"], "needs --group"),
        (["SWEEP", "--log-to-wandb"], "--log-to-wandb: no W&B API key"),
    ],
)
def test_wandb_report_errors_are_one_line(tmp_path, wandb_env, args, fragment):
    root = write_sweep(tmp_path / "s", [fake_result("step4", 0, [99.0], 7_074)])
    args = [str(root) if a == "SWEEP" else a for a in args]
    proc = run_cli("report", *args, env=dict(wandb_env, WANDB_MODE="online"), timeout=120)
    assert_one_line_error(proc, fragment)
