"""``mnist-dist bench --pack``: separate runs vs seed packs side by side; fields, not speed.

python -m pytest tests/test_bench_pack.py -q
"""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from torch import nn

from mnist_dist.bench.pack import layouts, markdown, parse_packs, print_packs
from mnist_dist.config import Runtime, TrainConfig
from mnist_dist.errors import UserError
from mnist_dist.training import updates
from mnist_dist.training.runinfo import cpu_model

from .conftest import cli_error, run_cli

# Tiny timings on a tiny set: one step or two per window; the fields are what is checked.
QUICK = ("--window", "0.05", "--warmup", "1", "--repeats", "2", "--batch-size", "16")
NAMES = ["separate 2x1", "separate 1x2", "pack2 2x1", "pack2 1x2", "pack4 2x1", "pack4 1x2"]


@pytest.mark.slow
def test_pack_bench_times_every_layout_in_fp32_and_bf16(tiny_mnist, capsys, tmp_path):
    args = ("bench", "--pack", "2,4", "--step", "step4", "--json", "--data-dir", str(tiny_mnist))
    proc = run_cli(*args, *QUICK)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert (r["mode"], r["packs"], r["width"], r["layouts"]) == ("pack-layouts", [2, 4], 2, NAMES)
    assert r["device"] == "cpu" and r["cpu_model"] == cpu_model() and r["repeats"] == 2
    assert len(r["load_avg_before"]) == len(r["load_avg_after"]) == 3
    assert [(row["step"], row["batch_size"], row["precision"]) for row in r["rows"]] == [
        ("step4", 16, "fp32"),
        ("step4", 16, "bf16"),
    ]
    for row in r["rows"]:
        assert list(row["layouts"]) == NAMES
        base = row["layouts"]["separate 2x1"]["seed_images_per_s"]
        for name, m in row["layouts"].items():
            pack = int(name.split()[0][4:]) if name.startswith("pack") else None
            procs, threads = (2, 1) if name.endswith("2x1") else (1, 2)
            assert (m["pack"], m["processes"], m["threads"]) == (pack, procs, threads)
            assert m["seeds_side_by_side"] == procs * (pack or 1)
            # the summed rate of each round, all positive; the median round is the figure
            assert len(m["rounds"]) == 2 and min(m["rounds"]) > 0
            assert m["seed_images_per_s"] == pytest.approx(statistics.median(m["rounds"]), abs=0.1)
            assert m["ms_per_step"] > 0 and all(n >= procs for n in m["steps"])  # >= 1 each
            assert m["vs_separate"] == pytest.approx(m["seed_images_per_s"] / base)
            # what was timed: the trainer's own step, on a grouped net of N seeds for a pack
            if pack:
                assert m["timed"] == "mnist_dist.training.updates.pack_update"
                assert m["conv_groups"] == [pack]
            else:
                assert (m["timed"], m["conv_groups"]) == (
                    "mnist_dist.training.updates.seed_update",
                    [1],
                )
            want = "bfloat16" if row["precision"] == "bf16" else "float32"
            assert m["compute_dtype"] == want
        rates = {k: v["seed_images_per_s"] for k, v in row["layouts"].items()}
        assert row["best"] == max(rates, key=rates.get)
    print_packs(r)  # the terminal form: a header, then the Markdown table
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"bench --pack on cpu ({cpu_model()}), ")
    table = out[out.index("") + 1 :]
    # --table reprints a saved run as the run printed it
    (tmp_path / "run.json").write_text(proc.stdout)
    again = run_cli("bench", "--table", str(tmp_path / "run.json"))
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == out + [""]
    assert table == markdown(r).splitlines()
    assert table[0] == "| step | batch | precision | " + " | ".join(NAMES) + (
        " | best (vs separate 2x1) |"
    )
    fp32 = r["rows"][0]
    cells = [f"{fp32['layouts'][k]['seed_images_per_s']:,.0f}" for k in NAMES]
    best = fp32["layouts"][fp32["best"]]["vs_separate"]
    assert table[2] == (
        f"| step4 | 16 | fp32 | {' | '.join(cells)} | {fp32['best']} ({best:.2f}x) |"
    )


@pytest.fixture
def accelerator():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)  # leave no state to other tests


def test_a_pack_loop_is_the_packed_trainers_step_on_each_seeds_own_batches(
    tiny_mnist, accelerator, monkeypatch
):
    from mnist_dist.bench.worker import build_loop
    from mnist_dist.data import load_mnist
    from mnist_dist.training.packnet import seed_state
    from mnist_dist.training.setup import build_net, load_data

    calls = []
    real = updates.pack_update

    def spy(model, optimizer, acc, x, y, cfg, sums):  # records, then runs the real step
        calls.append((model, x.clone(), y.clone()))
        return real(model, optimizer, acc, x, y, cfg, sums)

    monkeypatch.setattr(updates, "pack_update", spy)
    data = load_mnist(tiny_mnist, download=False)
    loop = build_loop("step4", "fp32", 3, 5, data, accelerator, batch_size=16)  # seeds 5-7
    cfgs = [TrainConfig(step="step4", batch_size=16, seed=s).resolve() for s in (5, 6, 7)]
    convs = [m for m in loop.model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.groups == 3 for m in convs)  # one grouped network of 3 seeds
    packed = loop.model.state_dict()
    for n, cfg in enumerate(cfgs):  # group n starts from seed n's own initial weights
        own = build_net(cfg).state_dict()
        for key, value in seed_state(packed, own, n, 3).items():
            assert torch.equal(value, own[key]), (n, key)
    assert loop.run() == 16 * 3  # seed-images: a batch of 16 for each of the 3 seeds
    assert loop.timed == f"{spy.__module__}.spy"  # the JSON's "timed": what it really calls
    [(model, x, y)] = calls
    assert model is loop.model  # on one CPU process, Accelerate prepares it as it is
    assert x.shape == (16, 3, 28, 28) and y.shape == (16, 3)
    for n, cfg in enumerate(cfgs):  # channel n: seed n's first batch, as its own run has it
        xb, yb = next(load_data(cfg, Runtime(cpu=True), accelerator, data)[2].epoch(0))
        assert torch.equal(x[:, n : n + 1], xb) and torch.equal(y[:, n], yb)
    plain = build_loop("step4", "fp32", 0, 5, data, accelerator, batch_size=16)
    assert plain.timed == "mnist_dist.training.updates.seed_update" and plain.run() == 16
    assert len(calls) == 1  # a separate run never goes through the packed step


def test_pack_sizes_and_layouts():
    assert parse_packs("4, 8,16,8,") == [4, 8, 16]
    assert [name for name, *_ in layouts([4, 8], 2)] == [
        "separate 2x1", "separate 1x2", "pack4 2x1", "pack4 1x2", "pack8 2x1", "pack8 1x2",
    ]  # fmt: skip
    assert layouts([16], 4)[2:] == [("pack16 4x1", 16, 4, 1), ("pack16 1x4", 16, 1, 4)]
    for text, fragment in [("0", "at least 1 seed, got 0"), ("x", "got 'x'"), (" , ", "no pack")]:
        with pytest.raises(UserError, match=fragment):
            parse_packs(text)


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (("--pack", "0"), "--pack sizes must be at least 1 seed, got 0"),
        (("--pack", "x"), "--pack takes whole numbers of seeds, e.g. --pack 4,8,16; got 'x'"),
        (("--pack", "4,-2"), "at least 1 seed, got -2"),
        (("--pack", "4", "--threads", "1"), "W must be at least 2, got 1"),
        (("--pack", "4", "--iters", "10"), "not --iters"),
        (("--pack", "4", "--window", "0"), "--window must be a positive number"),
        (("--pack", "4", "--mixed-precision", "bf16"), "leave out --mixed-precision"),
        (("--pack", "4", "--compile"), "--compile does not go with --pack"),
        (("--pack", "4", "--step-list", "step4,nosuchstep"), "unknown step 'nosuchstep'"),
        (("--window", "5"), "--window goes with --pack"),
    ],
)
def test_pack_bench_bad_input_is_one_line(capsys, flags, fragment):
    assert fragment in cli_error(capsys, "bench", *flags)
