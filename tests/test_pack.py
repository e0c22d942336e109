"""Seed packing (``train --seeds``): the same training as separate runs, per seed.

The equivalence runs in float64 (MNIST_DIST_TEST_FLOAT64=1, a test-only setting), where a
packed and a separate run differ only by float reduction order: histories agree to 1e-8.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from mnist_dist.config import TrainConfig
from mnist_dist.errors import UserError
from mnist_dist.models import MODELS, build_model
from mnist_dist.training.packnet import load_seed, pack_model, seed_state

from .conftest import REPO, assert_one_line_error, cli_error, make_tiny_mnist, run_cli

F64 = {"MNIST_DIST_TEST_FLOAT64": "1", "OMP_NUM_THREADS": "1"}
KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "val_loss", "val_acc")
KEYS += ("model_test_acc", "ema_test_acc", "ema_val_loss")


def read(path):
    return json.loads(path.read_text())


def assert_same_history(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for ha, hb in zip(a, b, strict=True):
        for key in KEYS:
            assert (key in ha) == (key in hb), key
            if key in ha:
                assert hb[key] == pytest.approx(ha[key], abs=1e-8), (ha["epoch"], key)


def packed_vs_separate(tmp_path, data, args, seeds=(0, 1, 2)):
    """Train ``seeds`` packed and each separately; returns {seed: (packed, separate)}."""
    common = ("train", *args, "--data-dir", str(data), "--eval-batch-size", "96")
    pack = run_cli(*common, "--seeds", ",".join(map(str, seeds)), "--out", str(tmp_path / "p"),
                   env=F64)  # fmt: skip
    assert pack.returncode == 0, pack.stderr
    out = {}
    for s in seeds:
        sep = tmp_path / f"s{s}"
        proc = run_cli(*common, "--seed", str(s), "--out", str(sep), env=F64)
        assert proc.returncode == 0, proc.stderr
        b = read(sep / "result.json")
        a = read(tmp_path / "p" / b["trial_id"] / "result.json")  # same trial id
        out[s] = (a, b)
        assert_same_checkpoint(tmp_path / "p" / b["trial_id"], sep)
    return out


def assert_same_checkpoint(packed, separate) -> None:
    """A packed seed's checkpoint is the one its separate run writes: model, optimizer
    state (momentum, AdamW moments), scheduler, EMA; so it resumes and loads as any run."""
    a = torch.load(packed / "checkpoint.pt", weights_only=True)
    b = torch.load(separate / "checkpoint.pt", weights_only=True)
    for key, value in b["model"].items():
        assert torch.allclose(a["model"][key], value, atol=1e-8, rtol=0), key
    for i, per in b["optimizer"]["state"].items():
        for k, v in per.items():
            assert torch.allclose(a["optimizer"]["state"][i][k], v, atol=1e-8, rtol=0), (i, k)
    assert a["scheduler"] == b["scheduler"] and a["epoch"] == b["epoch"]
    assert (a["ema"] is None) == (b["ema"] is None)
    for key, value in (b["ema"] or {}).items():
        assert torch.allclose(a["ema"][key], value, atol=1e-8, rtol=0), key


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        # OneCycle per batch, weight decay, a short last batch (236 = 3 x 64 + 44) and a
        # validation split; EMA, label smoothing and AdamW's moments are elementwise too;
        # BN statistics recomputed per seed's channels.
        (
            "--step",
            "step5",
            "--epochs",
            "2",
            "--train-limit",
            "300",
            "--val-split",
            "64",
            "--weight-decay",
            "0.001",
            "--ema-decay",
            "0.8",
            "--label-smoothing",
            "0.1",
            "--bn-recal",  # after the last epoch: the net's BN statistics and the EMA's
        ),
        ("--step", "step4", "--epochs", "2", "--train-limit", "200", "--lr-step", "1"),
        (
            "--step",
            "step3",
            "--epochs",
            "2",
            "--train-limit",
            "160",
            "--optimizer",
            "adamw",
            "--lr",
            "0.003",
        ),
        # no BN, biased convs, a GAP head (step2, not step1: the same kinds of layers at a
        # tenth of the arithmetic)
        ("--step", "step2", "--epochs", "2", "--train-limit", "96", "--batch-size", "32"),
    ],
    ids=["step5-onecycle-wd-val-ema", "step4-steplr", "step3-adamw", "step2"],
)
def test_packed_seeds_train_as_their_separate_runs(tmp_path, args):
    data = make_tiny_mnist(tmp_path / "data", n_train=512, n_test=96)
    # three seeds for the case with the most state per seed; two for the others (CI time)
    runs = packed_vs_separate(tmp_path, data, args, (0, 1, 2) if "--ema-decay" in args else (0, 1))
    for s, (packed, separate) in runs.items():
        assert packed["trial_id"] == separate["trial_id"] and packed["seed"] == s
        assert packed["params"] == separate["params"]
        assert packed["packed_with"] == [t for t in runs if t != s] and "pack" in packed["timing"]
        assert_same_history(packed["history"], separate["history"])
    # every seed got its own data and init: seed 0's history is not seed 1's
    assert runs[0][0]["history"][-1]["train_loss"] != runs[1][0]["history"][-1]["train_loss"]


@pytest.mark.slow
def test_seeds_write_normal_run_folders_that_report_groups(tiny_mnist, tmp_path):
    out = tmp_path / "p"
    args = ("train", "--step", "step5", "--seeds", "0-3", "--epochs", "1", "--train-limit",
            "256", "--data-dir", str(tiny_mnist), "--out", str(out))  # fmt: skip
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    folders = sorted(p for p in out.iterdir() if not p.name.startswith("."))
    want = [
        TrainConfig(step="step5", seed=s, epochs=1, train_limit=256).trial_id() for s in range(4)
    ]
    assert [f.name for f in folders] == sorted(want)
    for f in folders:
        config, result = read(f / "config.json"), read(f / "result.json")
        assert "packed_with" not in config and config == result["config"]
        assert (f / "checkpoint.pt").is_file()
    (group,) = read_report(out)["groups"]
    assert group["n"] == 4 and group["seeds"] == [0, 1, 2, 3]
    # the per-seed checkpoint is a standard one: the recognizer's loader reads it
    from mnist_dist.rundir import load_trained

    cfg, net = load_trained(folders[0])
    assert cfg.seed == read(folders[0] / "config.json")["seed"] and not net.training
    # rerun: finished seeds are refused without --resume, kept with it
    assert_one_line_error(run_cli(*args), "holds a finished run", "--resume")
    again = run_cli(*args, "--resume")
    assert again.returncode == 0 and again.stdout.count("already complete") == 4


def read_report(out):
    proc = run_cli("report", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_resume_trains_only_the_missing_seeds(tiny_mnist, tmp_path):
    out = tmp_path / "p"
    args = ("train", "--step", "step5", "--seeds", "0-2", "--epochs", "1", "--train-limit",
            "128", "--data-dir", str(tiny_mnist), "--out", str(out))  # fmt: skip
    assert run_cli(*args).returncode == 0
    results = sorted(out.glob("*/result.json"))
    kept = results[0].read_text()
    for r in results[1:]:
        r.unlink()
    proc = run_cli(*args, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("already complete") == 1 and "packed as one grouped net" in proc.stdout
    assert results[0].read_text() == kept and all(r.is_file() for r in results)


@pytest.mark.slow
def test_a_pack_that_dies_in_its_finish_resumes_without_training_again(tiny_mnist, tmp_path):
    """The pack writes its seeds' results one by one after its last save. A fault between
    them (here seed 1's result.json cannot be written) leaves seed 0 finished and seeds 1-2
    in the pack state: --resume finishes them from it, trains no epoch, and keeps seed 0."""
    out = tmp_path / "p"
    args = ("train", "--step", "step5", "--seeds", "0-2", "--epochs", "2", "--train-limit",
            "128", "--data-dir", str(tiny_mnist), "--out", str(out))  # fmt: skip
    cfg = TrainConfig(step="step5", epochs=2, train_limit=128)
    ids = [dataclasses.replace(cfg, seed=s).trial_id() for s in range(3)]
    blocker = out / ids[1] / "result.json"
    blocker.mkdir(parents=True)  # a folder where seed 1's result goes: its write fails
    assert run_cli(*args).returncode != 0
    kept = (out / ids[0] / "result.json").read_text()
    assert not (out / ids[2] / "result.json").exists() and list((out / ".packs").iterdir())
    blocker.rmdir()
    proc = run_cli(*args, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "resuming seeds [0, 1, 2] after epoch 2" in proc.stdout
    assert "epoch  1/2" not in proc.stdout and "epoch  2/2" not in proc.stdout  # none trained
    assert (out / ids[0] / "result.json").read_text() == kept
    for trial in ids[1:]:
        result = read(out / trial / "result.json")
        assert result["state"] == "done" and len(result["history"]) == 2
        assert (out / trial / "checkpoint.pt").is_file()
    assert not list((out / ".packs").iterdir())


def test_the_packed_module_is_grouped_and_moves_weights_both_ways():
    nets = [build_model("step4") for _ in range(3)]
    pack = pack_model(nets[0], 3)
    plain = [m for m in nets[0].modules() if isinstance(m, nn.Conv2d)]
    packed = [m for m in pack.modules() if isinstance(m, nn.Conv2d)]
    assert [m.groups for m in packed] == [3 * m.groups for m in plain]
    for n, net in enumerate(nets):
        load_seed(pack, n, net.state_dict(), 3)
    for n, net in enumerate(nets):
        back = seed_state(pack.state_dict(), net.state_dict(), n, 3)
        assert all(torch.equal(back[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("step", list(MODELS))
def test_log_softmax_stays_within_each_seed(step):
    """A softmax across all N x 10 logits would couple the seeds."""
    pack = pack_model(build_model(step), 4).eval()
    for n in range(4):  # pack_model leaves the weights uninitialised (garbage, even nan)
        load_seed(pack, n, build_model(step).state_dict(), 4)
    out = pack(torch.randn(2, 4, 28, 28))
    assert out.shape == (2, 4, 10)
    assert torch.allclose(out.exp().sum(-1), torch.ones(2, 4), atol=1e-5)


def test_an_unknown_module_is_named_even_when_its_children_convert():
    class Mine(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return self.conv(x) * 2

    with pytest.raises(UserError, match="Mine"):
        pack_model(nn.Sequential(Mine(), nn.ReLU()), 2)


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (("--seeds", "3-1"), "give seeds like 0-7"),
        (("--seeds", "a"), "give seeds like 0-7"),
        (("--seeds", "0-1", "--seed", "2"), "not both"),
        (("--seeds", "0-1", "--mixed-precision", "fp16", "--cpu"), "refuses fp16"),
    ],
)
def test_bad_seed_packs_are_one_line(tiny_mnist, tmp_path, capsys, flags, fragment):
    line = cli_error(capsys, "train", *flags, "--data-dir", str(tiny_mnist), "--out",
                     str(tmp_path / "o"))  # fmt: skip
    assert fragment in line


@pytest.mark.slow
def test_packing_refuses_several_processes(tiny_mnist, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
           "mnist_dist.train", "--seeds", "0-1", "--epochs", "1", "--train-limit", "64",
           "--data-dir", str(tiny_mnist), "--out", str(tmp_path / "o")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    ours = [ln for ln in proc.stderr.splitlines() if ln.startswith("mnist-dist: error:")]
    assert ours and all("cannot also run over 2 processes" in ln for ln in ours), proc.stderr
