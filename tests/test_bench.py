"""``mnist-dist bench``: the output's fields and their arithmetic, never the timings.

python -m pytest tests/test_bench.py -q
"""

from __future__ import annotations

import json

import pytest

from mnist_dist.bench.steps import markdown, print_all, step_list
from mnist_dist.bench.ttt import time_to_target
from mnist_dist.config import RECIPES
from mnist_dist.errors import UserError
from mnist_dist.training.runinfo import cpu_model

from .conftest import assert_one_line_error, cli_error, run_cli

# Tiny timings: the fields and ratios are what is checked, not the speed.
QUICK = ("--iters", "2", "--warmup", "1", "--repeats", "2", "--threads", "1", "--cpu")


@pytest.mark.slow
def test_bench_json_has_the_three_measurements_and_both_ratios(tiny_mnist, tmp_path):
    proc = run_cli("bench", "--step", "step4", "--json", "--data-dir", str(tiny_mnist), *QUICK)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert (r["step"], r["batch_size"], r["device"]) == ("step4", 64, "cpu")
    for name in ("origin", "ours", "compute"):
        m = r[name]
        assert m["ms_per_step"] > 0 and len(m["rounds_ms"]) == 2
        # 512 tiny training images = 8 full batches of 64: every step sees 64 images.
        assert m["images_per_s"] == pytest.approx(64 * 1000 / m["ms_per_step"])
        assert m["epoch_seconds"] == pytest.approx(512 / m["images_per_s"])
    a, b, c = (r[k]["ms_per_step"] for k in ("origin", "ours", "compute"))
    assert r["speedup"] == pytest.approx(a / b)
    assert r["data_overhead"] == pytest.approx((b - c) / c)
    assert r["threads"] == 1 and r["origin_workers"] == 2 and r["channels_last"] is True
    # --table turns saved --json outputs into the README's markdown rows.
    (tmp_path / "s4.json").write_text(proc.stdout)
    table = run_cli("bench", "--table", str(tmp_path / "s4.json"))
    assert table.returncode == 0, table.stderr
    header, rule, row = table.stdout.strip().splitlines()
    assert row.startswith("| step4 | 64 | ") and f"| {r['speedup']:.2f}x |" in row
    assert header.count("|") == rule.count("|") == row.count("|")


@pytest.mark.slow
def test_bench_table_uses_the_steps_recipe_batch_or_the_flag(tiny_mnist):
    args = ("bench", "--step", "step3", "--no-channels-last", "--data-dir", str(tiny_mnist))
    proc = run_cli(*args, *QUICK)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "bench step3, batch 64, cpu, 1 threads" in out  # step3's recipe batch, not 128
    for name in ("origin", "ours", "compute", "speedup b/a", "data overhead"):
        assert name in out
    proc = run_cli(*args, "--batch-size", "32", "--json", *QUICK)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert (r["batch_size"], r["channels_last"]) == (32, False)


@pytest.mark.slow
def test_bench_variants_time_compute_in_both_memory_formats(tiny_mnist):
    proc = run_cli("bench", "--variants", "--json", "--data-dir", str(tiny_mnist), *QUICK)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert set(r["variants"]) == {"eager nchw", "eager channels_last"}
    assert "origin" not in r and "speedup" not in r
    assert all(len(m["rounds_ms"]) == 2 for m in r["variants"].values())


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (("--iters", "0"), "--iters must be at least 1"),
        (("--steps", "0"), "--iters must be at least 1"),  # its old name still parses
        (("--repeats", "0"), "--repeats must be at least 1"),
        (("--batch-size", "0"), "--batch-size must be at least 1"),
        (("--step", "nosuchstep"), "unknown step 'nosuchstep'"),
        (("--mixed-precision", "fp8"), "invalid choice"),
        (("--time-to-target", "--result", "/nonexistent/result.json"), "no such file"),
        (("--table", "/nonexistent/bench.json"), "not a `mnist-dist bench --json` output"),
        (("--all-steps", "--mixed-precision", "bf16"), "time fp32 and bf16 side by side"),
        (("--all-steps", "--variants"), "--variants does not go with --all-steps"),
        (("--step-list", "step4,nosuchstep"), "unknown step 'nosuchstep'"),
    ],
)
def test_bench_bad_input_is_one_line(capsys, flags, fragment):
    assert fragment in cli_error(capsys, "bench", *flags)


def test_table_of_a_truncated_all_steps_run_is_one_line_and_prints_nothing(tmp_path):
    (tmp_path / "cut.json").write_text(json.dumps({"mode": "all-steps", "device": "cpu"}))
    proc = run_cli("bench", "--table", str(tmp_path / "cut.json"))
    assert_one_line_error(proc, "not a `mnist-dist bench --json` output (no 'device_name')")
    # its header renders, its rows do not: still nothing on stdout, not half a table
    head = dict(mode="all-steps", device="cpu", device_name=None, cpu_model="x", threads=1,
                steps=1, repeats=1, warmup=0, load_avg_before=[0, 0, 0],
                load_avg_after=[0, 0, 0], cores=2)  # fmt: skip
    (tmp_path / "rowless.json").write_text(json.dumps(head))
    proc = run_cli("bench", "--table", str(tmp_path / "rowless.json"))
    assert_one_line_error(proc, "not a `mnist-dist bench --json` output (no 'per_step')")
    assert proc.stdout == ""


@pytest.mark.slow
def test_time_to_target_trains_then_rereads_its_result(tiny_mnist, tmp_path):
    out = tmp_path / "ttt"
    common = ("bench", "--time-to-target", "--json")
    args = ("--step", "step4", "--seed", "3", "--epochs", "2", "--cpu", "--out", str(out))
    proc = run_cli(*common, *args, "--data-dir", str(tiny_mnist))
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    hist = json.loads((out / "result.json").read_text())["history"]
    assert (r["step"], r["seed"], r["epochs"]) == ("step4", 3, 2)
    assert all(h["eval_seconds"] > 0 for h in hist)  # train.py times evaluation apart
    assert r["train_seconds_all"] == pytest.approx(sum(h["seconds"] for h in hist))
    hits = [h for h in hist if h["test_acc"] >= 99.4]
    assert r["reached"] == bool(hits)
    if hits:
        k = hits[0]["epoch"]
        assert r["epoch"] == k
        assert r["train_seconds_to_target"] == pytest.approx(sum(h["seconds"] for h in hist[:k]))
        assert r["eval_seconds_to_target"] == pytest.approx(
            sum(h["eval_seconds"] for h in hist[:k])
        )
    again = run_cli(*common, "--result", str(out / "result.json"))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == r


def _result(accs, eval_seconds=True):
    hist = [
        dict(epoch=i + 1, test_acc=a, seconds=10.0 * (i + 1))
        | (dict(eval_seconds=1.0) if eval_seconds else {})
        for i, a in enumerate(accs)
    ]
    return dict(
        step="step4",
        seed=0,
        epochs=len(accs),
        batch_size=64,
        history=hist,
        final_test_acc=accs[-1],
        device="cpu",
        mixed_precision="no",
        config=dict(compile=False),
    )


def test_time_to_target_is_the_first_epoch_at_or_above_99_4():
    r = time_to_target(_result([98.0, 99.4, 99.2, 99.5]))
    assert (r["reached"], r["epoch"], r["test_acc"]) == (True, 2, 99.4)
    assert r["train_seconds_to_target"] == 30.0  # epochs 1 and 2: 10 s + 20 s
    assert r["eval_seconds_to_target"] == 2.0
    assert r["train_seconds_all"] == 100.0 and r["eval_seconds_all"] == 4.0
    assert r["best_test_acc"] == 99.5


def test_time_to_target_not_reached_or_without_eval_timing():
    r = time_to_target(_result([98.0, 99.39]))
    assert (r["reached"], r["epoch"], r["train_seconds_to_target"]) == (False, None, None)
    r = time_to_target(_result([99.6], eval_seconds=False))  # a result.json from before
    assert r["train_seconds_to_target"] == 10.0
    assert r["eval_seconds_to_target"] is None and r["eval_seconds_all"] is None


@pytest.mark.slow
def test_all_steps_times_origin_fp32_and_bf16_of_each_step_in_one_run(tiny_mnist, capsys, tmp_path):
    # step2, not step1: the same recipe batch (128) at a tenth of the arithmetic
    args = ("bench", "--step-list", "step2,step4", "--json", "--data-dir", str(tiny_mnist))
    proc = run_cli(*args, *QUICK)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["mode"] == "all-steps" and r["threads"] == 1 and r["cpu_model"] == cpu_model()
    assert len(r["load_avg_before"]) == len(r["load_avg_after"]) == 3
    assert [(row["step"], row["batch_size"]) for row in r["per_step"]] == [
        ("step2", 128),  # each step's recipe batch
        ("step4", 64),
    ]
    for row in r["per_step"]:
        bs = row["batch_size"]
        for loop in ("origin", "fp32", "bf16"):
            m = row[loop]
            assert m["ms_per_step"] > 0 and len(m["rounds_ms"]) == 2
            # 512 tiny training images: 4 full batches of 128, 8 of 64
            assert m["images_per_s"] == pytest.approx(bs * 1000 / m["ms_per_step"])
            assert m["epoch_seconds"] == pytest.approx(512 / m["images_per_s"])
        # what the first convolution really computed in: bf16 autocast applied to bf16 only
        assert (row["fp32"]["compute_dtype"], row["bf16"]["compute_dtype"]) == (
            "float32",
            "bfloat16",
        )
        a, f, b = (row[k]["ms_per_step"] for k in ("origin", "fp32", "bf16"))
        assert row["bf16_gain"] == pytest.approx(f / b)
        assert row["fp32_speedup"] == pytest.approx(a / f)
        assert row["bf16_speedup"] == pytest.approx(a / b)
    print_all(r)  # the terminal form: a header, then the Markdown table
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("bench all steps on cpu (") and "1 threads" in out[0]
    table = out[out.index("") + 1 :]
    # --table reprints a saved run as the run printed it
    (tmp_path / "run.json").write_text(proc.stdout)
    again = run_cli("bench", "--table", str(tmp_path / "run.json"))
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == out + [""]
    assert table == markdown(r).splitlines()
    assert table[0] == (
        "| step | batch | origin img/s | fp32 img/s | bf16 img/s | bf16 gain "
        "| fp32 speedup vs origin | bf16 speedup vs origin |"
    )
    s4 = r["per_step"][1]
    assert table[3] == (
        f"| step4 | 64 | {s4['origin']['images_per_s']:,.0f} | {s4['fp32']['images_per_s']:,.0f} "
        f"| {s4['bf16']['images_per_s']:,.0f} | {s4['bf16_gain']:.2f}x "
        f"| {s4['fp32_speedup']:.2f}x | {s4['bf16_speedup']:.2f}x |"
    )


def test_step_list_is_every_registered_step_or_the_named_ones_in_order():
    assert step_list(True, None) == list(RECIPES) and "step4" in RECIPES
    assert step_list(False, "step4, step3,step4,") == ["step4", "step3"]
    for flags, fragment in [((True, "step4"), "not both"), ((False, " , "), "is empty")]:
        with pytest.raises(UserError, match=fragment):
            step_list(*flags)
