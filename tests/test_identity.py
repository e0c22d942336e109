"""Pure decisions, in-process and fast: trial identity, labels, SLURM job ownership,
thread counts, the result dict, the checkpoint's scaler state and atomic writes."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from mnist_dist.config import TrainConfig
from mnist_dist.fsio import atomic_open, write_json
from mnist_dist.sweeps.state import slurm_state, trial_states
from mnist_dist.training.runinfo import cpu_threads, make_result

from .conftest import REPO


def test_golden_trial_ids_are_the_committed_folders():
    """The ids of committed evidence never move: their folders stay valid."""
    assert TrainConfig(step="step5", seed=0).trial_id() == "step5-s0-99cf922aaa"
    assert TrainConfig(step="step4", seed=2).trial_id() == "step4-s2-ef61a5b052"
    for name in ("beyond", "step4-seeds"):
        for folder in (REPO / "results" / name).glob("step*-s*-*"):
            config = json.loads((folder / "config.json").read_text())
            assert TrainConfig.from_dict(config).trial_id() == folder.name


def test_speed_only_fields_leave_the_id_and_numeric_ones_change_it():
    base = TrainConfig(step="step4", seed=0)
    assert TrainConfig(step="step4", eval_batch_size=500).trial_id() == base.trial_id()
    for change in (dict(compile=True), dict(world_size=2), dict(lr=0.05), dict(seed=1)):
        assert TrainConfig(step="step4", **change).trial_id() != base.trial_id(), change


def test_a_field_added_later_at_its_default_leaves_every_id_alone():
    @dataclass
    class Later(TrainConfig):  # e.g. a future recipe field
        label_smoothing: float = 0.0

    assert Later(step="step5").trial_id() == "step5-s0-99cf922aaa"
    assert Later(step="step5", label_smoothing=0.1).trial_id() != "step5-s0-99cf922aaa"
    assert "label_smoothing" not in Later(step="step5").identity()


def test_resolve_reads_no_environment(monkeypatch):
    before = TrainConfig(step="step4").trial_id()
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert TrainConfig(step="step4").resolve().mixed_precision == "no"
    assert TrainConfig(step="step4").trial_id() == before


def test_config_hash_is_the_identity_less_the_seed_and_labels_name_the_difference():
    a, b = TrainConfig(step="step4", seed=0), TrainConfig(step="step4", seed=7)
    assert a.config_hash() == b.config_hash() and a.trial_id() != b.trial_id()
    assert TrainConfig(step="step4", lr=0.01).config_hash() != a.config_hash()
    assert a.label() == "step4" and TrainConfig(step="step4", lr=0.05).label() == "step4 (lr=0.05)"
    assert TrainConfig(step="step4", lr=0.018).label() == "step4"  # the recipe's own lr


@pytest.mark.parametrize(
    "live, want",
    [
        ({"7_1": ("RUNNING", "smoke", "tok")}, "RUNNING"),
        ({"7_1": ("RUNNING", "other-sweep", "tok")}, ""),  # a reused number: not ours
        ({"7_1": ("PENDING", "smoke", "another")}, ""),  # our name, another submission
        ({}, ""),  # squeue forgot it: it ended
    ],
)
def test_a_job_number_reused_after_a_cluster_restart_is_not_ours(live, want):
    job = dict(job_id="7_1", trial_ids=["t"], cluster="slurm", token="tok")
    assert slurm_state(job, live, "smoke") == want


def test_trial_states_without_squeue_are_unknown_not_missing(tmp_path, monkeypatch):
    """A recorded SLURM job whose state cannot be read may still be queued."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no squeue on PATH
    record = dict(
        name="s",
        trials=[dict(trial_id="a", config={}), dict(trial_id="b", config={})],
        jobs=[dict(job_id="9_0", trial_ids=["a"], cluster="slurm", token="x")],
    )
    rows = {r["trial_id"]: r for r in trial_states(tmp_path, record)}
    assert rows["a"]["state"] == "unknown" and "squeue did not answer" in rows["a"]["error"]
    assert rows["b"]["state"] == "missing"


def test_thread_count_prefers_the_explicit_grant(monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert cpu_threads(3) == 3  # --threads (a trial's cpus_per_task, sbatch's CPUs/procs)
    assert cpu_threads() == 8
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert cpu_threads() == 7
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")
    assert cpu_threads() == 1  # never zero


def test_make_result_is_a_pure_summary_of_the_history():
    cfg = TrainConfig(step="step4", seed=3, epochs=3).resolve()
    history = [
        dict(epoch=1, test_acc=99.1, seconds=10.0, val_acc=99.0),
        dict(epoch=2, test_acc=99.5, seconds=11.0, val_acc=99.2),
        dict(epoch=3, test_acc=99.3, seconds=12.0, val_acc=99.4),
    ]
    r = make_result(cfg, history, params=7074, n_train=10, n_test=20, wall_seconds=40.0,
                    run=dict(threads=2))  # fmt: skip
    assert (r["final_test_acc"], r["best_test_acc"], r["best_epoch"]) == (99.3, 99.5, 2)
    assert r["first_epoch_at_target"] == 2 and r["final_val_acc"] == 99.4
    assert r["train_seconds"] == 33.0 and r["wall_seconds"] == 40.0 and r["threads"] == 2
    assert r["trial_id"] == cfg.trial_id() and r["config_hash"] == cfg.config_hash()
    assert r["config"] == cfg.to_dict() and r["history"] is history


def test_checkpoint_keeps_the_grad_scaler_state(tmp_path):
    """fp16 runs on GPUs only; the scaler's round trip through our checkpoint is checked
    here on CPU (the full fp16 resume needs a GPU)."""
    from types import SimpleNamespace

    from mnist_dist.rundir import checkpoint_state, load_checkpoint, restore, save_checkpoint

    cfg = TrainConfig(step="step4", epochs=2).resolve()
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**7, growth_interval=3)
    scaler._lazy_init_scale_growth_tracker(torch.device("cpu"))
    scaler.update(2.0**5)  # a scale the defaults would never give
    acc = SimpleNamespace(scaler=scaler, print=lambda *a: None)
    history = [dict(epoch=1)]
    save_checkpoint(tmp_path / "c.pt", checkpoint_state(net, opt, sched, acc, history, cfg, 12.5))

    fresh = SimpleNamespace(scaler=torch.amp.GradScaler("cpu"), print=lambda *a: None)
    ckpt = load_checkpoint(tmp_path / "c.pt", cfg)
    hist, wall = restore(ckpt, net, opt, sched, fresh, tmp_path)
    assert fresh.scaler.state_dict() == scaler.state_dict()
    assert fresh.scaler.get_scale() == 2.0**5 and hist == history and wall == 12.5


def test_atomic_open_leaves_the_old_file_on_error_and_no_temporaries(tmp_path):
    path = tmp_path / "r.json"
    write_json(path, {"a": 1})
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write('{"a": 2')
        raise RuntimeError("preempted mid-write")
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["r.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # readable as any file, not 0600
