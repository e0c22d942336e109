"""The trainer's per-epoch hook (issue #21): one loop for a seed and a pack asks it after
every epoch, per seed, whether to go on; a stopped seed's result.json says why and where,
and the other seeds of its pack train on as their separate runs do."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from mnist_dist.config import Runtime, TrainConfig
from mnist_dist.training import train, train_seeds
from mnist_dist.training.loop import GO_ON, PRUNED, stop_diverged

from .conftest import make_tiny_mnist, run_cli, timeless
from .test_pack import assert_same_history


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = make_tiny_mnist(tmp_path / "data", n_train=256, n_test=64)
    cfg = TrainConfig(step="step4", epochs=3, train_limit=192, eval_batch_size=64, lr_step=1)
    rt = Runtime(data_dir=str(data), download=False, cpu=True, threads=1, progress=False,
                 float64=True)  # fmt: skip
    return cfg, rt


@pytest.mark.slow
def test_a_pruned_seed_of_a_pack_stops_and_the_others_train_as_alone(setup, tmp_path):
    cfg, rt = setup
    seen = []

    def prune_seed_1_after_epoch_1(epoch, rows):
        seen.append((epoch, len(rows)))
        # the loop hands rows in pack order; only seeds still training are asked
        return [PRUNED if (epoch, n, len(rows)) == (1, 1, 2) else GO_ON for n in range(len(rows))]

    pack = dataclasses.replace(rt, out=str(tmp_path / "pack"), seeds=[0, 1])
    results = train_seeds(cfg, pack, on_epoch=prune_seed_1_after_epoch_1)
    assert seen == [(1, 2), (2, 1), (3, 1)]  # seed 1 is asked once, then never again
    pruned, kept = results[1], results[0]
    assert pruned["state"] == "pruned" and [h["epoch"] for h in pruned["history"]] == [1]
    assert kept["state"] == "done" and len(kept["history"]) == 3
    folder = tmp_path / "pack" / pruned["trial_id"]
    assert json.loads((folder / "result.json").read_text())["state"] == "pruned"
    assert not (folder / "checkpoint.pt").exists()  # its weights are not the recipe's
    assert (tmp_path / "pack" / kept["trial_id"] / "checkpoint.pt").is_file()

    lone = dataclasses.replace(rt, out=str(tmp_path / "alone"))
    alone = train(dataclasses.replace(cfg, seed=0), lone)
    assert_same_history(kept["history"], alone["history"])  # its pack mate left: no change

    report = run_cli("report", str(tmp_path / "pack"), "--json")  # a folder of runs
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert [g["seeds"] for g in data["groups"]] == [[0]]
    assert [(m["trial_id"], m["status"], m["reason"]) for m in data["missing"]] == [
        (pruned["trial_id"], "pruned", "pruned after epoch 1")
    ]


@pytest.mark.slow
def test_a_stopped_single_run_records_its_state_and_report_reads_it(setup, tmp_path):
    cfg, rt = setup
    calls = []

    def diverge_at_2(epoch, rows):
        calls.append(epoch)
        return ["diverged" if epoch == 2 else GO_ON]

    out = tmp_path / "runs" / "one"
    result = train(cfg, dataclasses.replace(rt, out=str(out)), on_epoch=diverge_at_2)
    assert calls == [1, 2] and result["state"] == "diverged" and len(result["history"]) == 2
    assert json.loads((out / "result.json").read_text())["state"] == "diverged"
    assert not (out / "checkpoint.pt").exists()
    other = train(
        dataclasses.replace(cfg, seed=1),
        dataclasses.replace(rt, out=str(tmp_path / "runs" / "two")),
    )
    assert other["state"] == "done"

    report = run_cli("report", str(tmp_path / "runs"), "--json")
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert [g["n"] for g in data["groups"]] == [1]  # a stopped run is no final-epoch figure
    assert [(m["trial_id"], m["status"], m["reason"]) for m in data["missing"]] == [
        ("one", "diverged", "diverged after epoch 2")
    ]


@pytest.mark.slow
def test_a_pack_resumed_after_a_crash_keeps_its_stopped_seed_stopped(setup, tmp_path, monkeypatch):
    """The pack's state records which seeds the hook stopped: after a crash, --resume goes
    on after the last epoch saved (not after the stopped seed's last epoch), never retrains
    the pruned seed, and the kept seed still ends as its lone run does."""
    from mnist_dist.training.packed import PackRun

    cfg, rt = setup

    def prune_seed_0_after_epoch_1(epoch, rows):  # the first seed: its history is the short one
        return [PRUNED if (epoch, n, len(rows)) == (1, 0, 2) else GO_ON for n in range(len(rows))]

    real_save, saves = PackRun.save, []

    def save_then_crash(run):
        saves.append(len(run.histories[0]))
        if len(saves) == 3:  # epochs 1 and 2 are saved, seed 0 stopped after epoch 1
            raise OSError("node lost")
        real_save(run)

    monkeypatch.setattr(PackRun, "save", save_then_crash)
    pack = dataclasses.replace(rt, out=str(tmp_path / "pack"), seeds=[0, 1])
    with pytest.raises(OSError, match="node lost"):
        train_seeds(cfg, pack, on_epoch=prune_seed_0_after_epoch_1)
    monkeypatch.setattr(PackRun, "save", real_save)

    asked = []

    def record(epoch, rows):
        asked.append((epoch, len(rows)))
        return [GO_ON] * len(rows)

    results = train_seeds(cfg, dataclasses.replace(pack, resume=True), on_epoch=record)
    assert asked == [(3, 1)]  # from epoch 3, and only the seed still training
    assert results[0]["state"] == "pruned" and len(results[0]["history"]) == 1
    lone = dataclasses.replace(rt, out=str(tmp_path / "alone"))
    alone = train(dataclasses.replace(cfg, seed=1), lone)
    assert_same_history(results[1]["history"], alone["history"])


def strict_json(path):
    """json.loads refusing NaN and Infinity, as strict parsers (jq, JavaScript) do."""

    def refuse(name):
        raise ValueError(f"{path} holds {name}: not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.slow
def test_a_loss_that_blows_up_stops_the_run_diverged_in_valid_json(setup, tmp_path, capsys):
    cfg, rt = setup
    out = tmp_path / "run"
    train(dataclasses.replace(cfg, lr=1e10), dataclasses.replace(rt, out=str(out)))
    (epoch,) = re.findall(r"stopped after epoch (\d): diverged \(training loss nan\)",
                          capsys.readouterr().out)  # fmt: skip
    result = strict_json(out / "result.json")
    assert result["state"] == "diverged" and len(result["history"]) == int(epoch)  # no more
    assert result["history"][-1]["train_loss"] is None  # NaN, written as null
    assert all(row["train_loss"] is not None for row in result["history"][:-1])
    assert not (out / "checkpoint.pt").exists()


@pytest.mark.slow
def test_a_diverged_seed_leaves_its_pack_mates_unchanged_bit_for_bit(tmp_path, monkeypatch):
    """Seed 1's weights turn NaN in epoch 2: it stops there, diverged; seeds 0 and 2 end
    exactly (float32, ==) as in the same pack where nothing went wrong."""
    import torch

    from mnist_dist.training.packed import PackRun

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = make_tiny_mnist(tmp_path / "data", n_train=256, n_test=64)
    cfg = TrainConfig(step="step4", epochs=3, train_limit=192, eval_batch_size=64, lr_step=1)
    rt = Runtime(data_dir=str(data), download=False, cpu=True, threads=1, progress=False,
                 seeds=[0, 1, 2])  # fmt: skip
    clean = train_seeds(cfg, dataclasses.replace(rt, out=str(tmp_path / "clean")))

    real_step = PackRun.step

    def poison_seed_1_in_epoch_2(run, x, y, sums, active):
        if len(run.histories[1]) == 1:  # epoch 1 is done: seed 1's first weight goes NaN
            weight = next(run.net.parameters())  # (3 seeds x out, in, k, k): grouped conv
            with torch.no_grad():
                weight[len(weight) // 3 : 2 * len(weight) // 3] = float("nan")
        real_step(run, x, y, sums, active)

    monkeypatch.setattr(PackRun, "step", poison_seed_1_in_epoch_2)
    hit = train_seeds(cfg, dataclasses.replace(rt, out=str(tmp_path / "hit")))
    assert hit[1]["state"] == "diverged" and len(hit[1]["history"]) == 2
    assert strict_json(tmp_path / "hit" / hit[1]["trial_id"] / "result.json")["state"] == "diverged"
    for s in (0, 2):
        assert hit[s]["state"] == "done"
        assert timeless(hit[s]["history"]) == timeless(clean[s]["history"])  # bit for bit


def test_the_divergence_rule_reads_every_loss_of_the_epoch():
    """NaN weights from an epoch's last batch leave its mean training loss finite: the
    held-out losses show them."""
    nan, inf = float("nan"), float("inf")
    rows = [dict(train_loss=0.1, val_loss=0.2), dict(train_loss=0.1, test_loss=nan),
            dict(train_loss=inf), dict(train_loss=0.3, val_loss=nan, test_loss=0.1),
            dict(train_loss=0.3, test_loss=0.4)]  # fmt: skip
    assert stop_diverged(1, rows) == [GO_ON, "diverged", "diverged", "diverged", GO_ON]
