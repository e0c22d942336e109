"""``mnist-dist report``: statistics from a sweep folder, outputs, and one-line errors.

PYTHONPATH=. python -m pytest tests/test_report.py -q
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from scipy import stats as sps

from mnist_dist.config import Runtime, TrainConfig
from mnist_dist.report.report import missing_lines

from .conftest import REPO, assert_one_line_error, cli_error, make_tiny_mnist, run_cli
from .synthetic import fake_result, write_sweep


def synthetic_results(seeds: int = 4) -> list[dict]:
    rng = np.random.default_rng(1)
    out = []
    for step, params in (("step1", 190_442), ("step4", 7_074)):
        for seed in range(seeds):
            out.append(fake_result(step, seed, list(rng.normal([98.9, 99.3, 99.4], 0.1)), params))
    return out


def test_json_statistics_match_numpy_and_scipy_and_name_missing_and_failed(tmp_path):
    results = synthetic_results()
    root = write_sweep(tmp_path / "s", results, extra_ids=["step4-s8-gone", "step4-s9-boom"])
    (root / "step4-s9-boom" / "error.txt").write_text("Traceback...\nRuntimeError: CUDA OOM\n")
    proc = run_cli("report", str(root), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [g["step"] for g in report["groups"]] == ["step1", "step4"]
    for g in report["groups"]:
        x = np.array([r["final_test_acc"] for r in results if r["step"] == g["step"]])
        n = len(x)
        assert g["n"] == n == 4
        assert g["mean"] == pytest.approx(x.mean())
        assert g["variance"] == pytest.approx(x.var(ddof=1))
        assert g["std"] == pytest.approx(x.std(ddof=1))
        assert g["sem"] == pytest.approx(sps.sem(x))
        lo, hi = sps.t.interval(0.95, n - 1, loc=x.mean(), scale=sps.sem(x))
        assert g["ci95"] == pytest.approx([lo, hi])
        assert (g["min"], g["max"]) == pytest.approx((x.min(), x.max()))
        assert g["n_at_target"] == int((x >= 99.4).sum())
    status = {m["trial_id"]: (m["status"], m["reason"]) for m in report["missing"]}
    assert status == {
        "step4-s8-gone": ("missing", "no result.json"),
        "step4-s9-boom": ("failed", "RuntimeError: CUDA OOM"),
    }
    table = run_cli("report", str(root))
    assert table.returncode == 0, table.stderr
    assert "missing or failed trials: 2" in table.stdout
    assert "step4-s9-boom: failed: RuntimeError: CUDA OOM" in table.stdout
    assert "optimistic" in table.stdout  # the best-epoch line carries its label


def test_one_seed_group_shows_no_ci_and_says_so(tmp_path):
    results = synthetic_results(seeds=2)[:3]  # step1 x2, step4 x1
    root = write_sweep(tmp_path / "s", results)
    report = json.loads(run_cli("report", str(root), "--json").stdout)
    one = report["groups"][1]
    assert one["n"] == 1 and one["ci95"] is None and "n=1" in one["ci95_note"]
    table = run_cli("report", str(root)).stdout
    assert "n/a (n=1)" in table and "one seed has no variance" in table


def test_collapsed_seeds_count_in_n_and_are_named_by_report_and_status(tmp_path, capsys):
    """One rule (final accuracy below 20%): a dead seed stays in the statistics, and the
    report and status say so, as the study's step1 seed 0 at 9.80% needs."""
    from mnist_dist.cli import main

    finals = ((0, 9.8), (1, 98.9), (2, 99.0))
    results = [fake_result("step1", s, [a], params=100) for s, a in finals]
    results.append(fake_result("step4", 0, [99.2], params=200))
    root = write_sweep(tmp_path / "s", results)
    main(["report", str(root), "--json"])
    groups = json.loads(capsys.readouterr().out)["groups"]
    assert [(g["n"], g["n_collapsed"]) for g in groups] == [(3, 1), (1, 0)]
    assert groups[0]["mean"] == pytest.approx((9.8 + 98.9 + 99.0) / 3)  # still in the mean
    # its t-interval leaves [0, 100]: the bootstrap one is shown, labelled, the t one kept
    t_lo, t_hi = groups[0]["ci95"]
    assert t_lo < 0 and 9.8 <= groups[0]["ci95_bounded"][0] < groups[0]["ci95_bounded"][1] <= 99
    main(["report", str(root)])
    table = capsys.readouterr().out
    assert "3 (1 collapsed)" in table and "step1: 1 of 3 collapsed" in table
    lo, hi = groups[0]["ci95_bounded"]
    assert f"[{lo:.3f}, {hi:.3f}] bootstrap" in table and f"[{t_lo:.3f}, {t_hi:.3f}]" in table
    main(["status", str(root)])
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  ")]
    named = [ln.split()[0] for ln in rows if "(collapsed: below 20%)" in ln]
    assert named == ["step1-s0-synthetic"]
    main(["status", str(root), "--json"])
    trials = json.loads(capsys.readouterr().out)["trials"]
    assert [t["collapsed"] for t in trials] == [True, False, False, False]


def test_the_plots_count_collapsed_seeds_for_accuracies_only():
    """A seed under 20% accuracy is a dead net; 12 s of training time or a loss of 0.3 is
    not: the plots' rule reads the report's metric."""
    from mnist_dist.report.plots import trained
    from mnist_dist.report.stats import config_groups

    results = [fake_result("step1", s, [a], params=100) for s, a in ((0, 9.8), (1, 98.9))]
    for r in results:
        r["train_seconds"] = 12.0
    (group,) = config_groups(results, "step")[0]
    runs, dead = trained(group)
    assert [r["seed"] for r in runs] == [1] and dead == 1
    runs, dead = trained(group, "train_seconds")
    assert len(runs) == 2 and dead == 0


def test_the_zooms_show_the_configs_near_the_best_and_collapsed_seeds_never_set_them():
    """step2's seeds that trained end near 80%: the zooms keep step3 and step4 (within a
    point of the best mean), never step2; a collapsed step3 seed does not pull step3 out."""
    from mnist_dist.report.plots import contenders
    from mnist_dist.report.stats import config_groups

    finals = {"step2": (70.0, 89.0, 90.0), "step3": (9.8, 99.2, 99.3), "step4": (99.3, 99.4)}
    results = [fake_result(step, s, [a], params=100 + len(step))
               for step, accs in finals.items() for s, a in enumerate(accs)]  # fmt: skip
    groups = sorted(config_groups(results, "step")[0], key=lambda g: g.label)
    assert [g.label for g in groups] == ["step2", "step3", "step4"]
    assert contenders(groups) == [False, True, True]
    for r in results:
        r["train_seconds"] = 10.0
    assert contenders(groups, "train_seconds") == [True, True, True]  # no accuracy: no zoom


def test_works_on_any_folder_of_runs_and_by_never_pools_configs(tmp_path):
    """--by lr over step1 and step4: one lr value holds two configs, so two rows, named."""
    results = synthetic_results(seeds=2)
    results[0]["config"]["lr"] = 0.05
    write_sweep(tmp_path / "s", results)
    (tmp_path / "s" / "sweep.json").unlink()  # no sweep.json: glob the run folders
    proc = run_cli("report", str(tmp_path / "s"), "--json", "--by", "lr")
    report = json.loads(proc.stdout)
    rows = {g["label"]: (g["lr"], g["step"], g["n"]) for g in report["groups"]}
    assert rows == {
        "0.018 (step1)": (0.018, "step1", 1),
        "0.018 (step4)": (0.018, "step4", 2),
        "0.05": (0.05, "step1", 1),
    }
    (warning,) = proc.stderr.splitlines()
    assert "lr=0.018 holds 2 configs" in warning and "step" in warning and "never pooled" in warning
    assert report["missing"] == []


def test_two_lrs_of_one_step_are_two_groups_with_the_difference_named(tmp_path):
    results = [fake_result("step4", s, [99.0 + s / 10], 7_074) for s in range(4)]
    for r in results[:2]:
        r["config"]["lr"] = 0.01
    for r in results[2:]:
        r["config"]["lr"] = 0.05
    root = write_sweep(tmp_path / "s", results)
    proc = run_cli("report", str(root))
    assert proc.returncode == 0, proc.stderr
    assert "step4 (lr=0.01)" in proc.stdout and "step4 (lr=0.05)" in proc.stdout
    assert "step=step4 holds 2 configs (they differ in lr)" in proc.stderr
    groups = json.loads(run_cli("report", str(root), "--json").stdout)["groups"]
    assert [(g["label"], g["n"]) for g in groups] == [
        ("step4 (lr=0.01)", 2),
        ("step4 (lr=0.05)", 2),
    ]
    assert groups[0]["config_hash"] != groups[1]["config_hash"]


def test_a_config_at_its_base_value_is_labelled_with_that_value(tmp_path):
    """A field at its base value is left out of the identity; its label still shows it."""
    results = [fake_result("step4", s, [99.0 + s / 10], 7_074) for s in range(4)]
    for r in results[2:]:
        r["config"].update(rotate_deg=10.0, crop_p=0.0)
    root = write_sweep(tmp_path / "s", results)
    groups = json.loads(run_cli("report", str(root), "--json").stdout)["groups"]
    assert sorted(g["label"] for g in groups) == [
        "step4 (crop_p=0.0, rotate_deg=10.0)",
        "step4 (crop_p=0.1, rotate_deg=15.0)",
    ]


def test_a_seed_run_twice_counts_once_the_newest(tmp_path):
    results = synthetic_results(seeds=2)
    root = write_sweep(tmp_path / "s", results)
    (root / "sweep.json").unlink()
    again = dict(results[0], final_test_acc=12.5, trial_id="rerun")  # step1 seed 0, again
    (root / "rerun").mkdir()
    (root / "rerun" / "result.json").write_text(json.dumps(again))
    os.utime(root / results[0]["trial_id"] / "result.json", (1, 1))  # the older one
    proc = run_cli("report", str(root), "--json")
    step1 = json.loads(proc.stdout)["groups"][0]
    assert step1["n"] == 2 and step1["seeds"] == [0, 1] and 12.5 in step1["final_test_acc"]
    (warning,) = proc.stderr.splitlines()
    assert "seed 0 of step1 appears twice" in warning
    assert str(root / "rerun") in warning and results[0]["trial_id"] in warning


def test_old_and_new_runs_of_one_config_are_one_group(tmp_path):
    """A config.json written before world_size existed counts as world_size 1."""
    results = synthetic_results(seeds=2)[2:]  # step4 seeds 0, 1
    del results[0]["config"]["world_size"]
    root = write_sweep(tmp_path / "s", results)
    (g,) = json.loads(run_cli("report", str(root), "--json").stdout)["groups"]
    assert g["n"] == 2 and g["label"] == "step4"


@pytest.mark.parametrize("name", ["beyond", "step4-seeds"])
def test_committed_evidence_reports_as_committed(name):
    """The committed sweeps: same groups, n and means as their committed report.json."""
    root = REPO / "results" / name
    proc = run_cli("report", str(root), "--json")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    now = json.loads(proc.stdout)["groups"]
    then = json.loads((root / "report.json").read_text())["groups"]
    assert [(g["step"], g["n"]) for g in now] == [(g["step"], g["n"]) for g in then]
    assert [g["mean"] for g in now] == pytest.approx([g["mean"] for g in then])


def test_corrupted_result_reports_the_rest_and_names_the_file(tmp_path):
    results = synthetic_results(seeds=3)
    root = write_sweep(tmp_path / "s", results)
    bad = root / results[1]["trial_id"] / "result.json"
    bad.write_text('{"step": "step1", "final_te')  # torn write
    proc = run_cli("report", str(root), "--json")
    assert_one_line_error(proc, "corrupted result.json", str(bad))
    report = json.loads(proc.stdout)  # the rest is still reported
    assert [g["n"] for g in report["groups"]] == [2, 3]
    assert report["missing"][0]["status"] == "corrupt"


@pytest.mark.parametrize(
    "make, args, fragment",
    [
        (lambda p: None, ["--json"], "no such folder"),
        (lambda p: p.mkdir(), [], "holds no runs"),
        (lambda p: write_sweep(p, synthetic_results(1)), ["--by", "colour"], "unknown --by key"),
        (lambda p: write_sweep(p, [], ["a", "b"]), [], "no finished trials (2 missing"),
        (lambda p: (p.mkdir(), (p / "sweep.json").write_text("{")), [], "is not a readable sweep"),
        (lambda p: write_sweep(p, synthetic_results(1)), ["--wandb", "e/p"], "one of them"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, make, args, fragment):
    make(tmp_path / "s")
    line = cli_error(capsys, "report", str(tmp_path / "s"), *args)
    assert fragment in line
    if fragment == "unknown --by key":
        assert "valid keys: step, seed" in line


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
    """A real, tiny sweep: 2 steps x 2 seeds, 2 epochs on 256 images, run in-process."""
    from mnist_dist.training.loop import train

    base = tmp_path_factory.mktemp("smoke")
    data = make_tiny_mnist(base / "data", n_train=256, n_test=256)
    root, trials = base / "sweep", []
    for step in ("step1", "step4"):
        for seed in (0, 1):
            cfg = TrainConfig(step=step, seed=seed, epochs=2, train_limit=256)
            tid = cfg.trial_id()
            train(cfg, Runtime(out=str(root / tid), data_dir=str(data), progress=False))
            trials.append(dict(trial_id=tid, config=cfg.resolve().to_dict()))
    sweep = dict(name="smoke", file="jobs/smoke.toml", trials=trials, jobs=[])
    (root / "sweep.json").write_text(json.dumps(sweep))
    return root


@pytest.mark.slow
def test_report_on_a_real_sweep_writes_markdown_and_plots(smoke_sweep, tmp_path):
    md, plots = tmp_path / "report.md", tmp_path / "plots"
    proc = run_cli(
        "report", str(smoke_sweep), "--json", "--markdown", str(md), "--plots", str(plots)
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    results = [json.loads(p.read_text()) for p in smoke_sweep.glob("*/result.json")]
    assert len(results) == 4 and report["missing"] == []
    for g in report["groups"]:
        x = [r["final_test_acc"] for r in results if r["step"] == g["step"]]
        assert g["n"] == 2 and g["mean"] == pytest.approx(np.mean(x))
        assert g["std"] == pytest.approx(np.std(x, ddof=1))
        assert g["params"] == results[[r["step"] for r in results].index(g["step"])]["params"]
    text = md.read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| step")]
    assert rows[0].startswith("| step | params | train accuracy (%) | test accuracy (%)")
    for g in report["groups"]:
        assert f"| {g['step']} | {g['params']:,} |" in text
        assert f"{g['mean']:.2f} ± {g['std']:.2f} (n=2)" in text
    import matplotlib.image as mpimg

    for name in ("test_acc_per_epoch.png", "final_acc_vs_params.png"):
        png = plots / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(png)
        assert img.shape[0] > 300 and img.shape[1] > 500
        # non-trivial: many distinct colours (lines, bands, text), not a blank canvas
        assert len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 50


def test_metric_final_val_acc_is_named_and_runs_without_it_are_listed(tmp_path):
    """--metric final_val_acc: mean ± std of validation accuracy, never called test accuracy;
    a run trained without --val-split (final_val_acc null) is missing, with the reason."""
    results = [fake_result("step4", s, [98.0, 99.0 + s / 10], 7_074) for s in range(4)]
    for r, val in zip(results, [99.1, 99.3, 99.5, None], strict=True):
        r["final_val_acc"] = val
    root = write_sweep(tmp_path / "s", results)
    proc = run_cli("report", str(root), "--metric", "final_val_acc", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    (g,) = report["groups"]
    assert report["metric"] == g["metric"] == "final_val_acc"
    assert g["n"] == 3 and g["values"] == [99.1, 99.3, 99.5] and "final_test_acc" not in g
    assert g["mean"] == pytest.approx(99.3) and g["std"] == pytest.approx(0.2)
    assert g["n_at_target"] == 1  # 99.5 >= 99.4
    ((m),) = report["missing"]
    assert (m["trial_id"], m["status"]) == ("step4-s3-synthetic", "no metric")
    assert m["reason"] == "final_val_acc is null in result.json (trained without --val-split?)"
    md = tmp_path / "r.md"
    proc = run_cli("report", str(root), "--metric", "final_val_acc", "--markdown", str(md))
    assert proc.returncode == 0, proc.stderr
    title = proc.stdout.splitlines()[0]
    assert title == "syn: final-epoch validation accuracy (%) over seeds, by step"
    assert "step4-s3-synthetic: no metric: final_val_acc is null" in proc.stdout
    head = next(ln for ln in md.read_text().splitlines() if ln.startswith("| step"))
    assert "final-epoch validation accuracy (%)" in head and "| test accuracy" not in head
    assert "99.30 ± 0.20 (n=3)" in md.read_text()


def tuning_result(step: str, seed: int, val_accs: list[float], params: int) -> dict:
    """A result.json of a tuning run (test_eval = "never"): validation figures only."""
    r = fake_result(step, seed, val_accs, params)
    for h in r["history"]:
        h["val_acc"], h["val_loss"] = h.pop("test_acc"), 0.05
    r.update(final_val_acc=val_accs[-1], final_test_acc=None, best_test_acc=None, best_epoch=None)
    return r


def ink(png, rgb: tuple[int, int, int]) -> int:
    """Pixels of one line colour (within 8 of 255 on each channel) in a PNG."""
    import matplotlib.image as mpimg

    img = mpimg.imread(png)[..., :3] * 255
    return int((np.abs(img - np.array(rgb)).max(axis=-1) < 8).sum())


def test_validation_report_plots_validation_curves_and_claims_no_test_figure(tmp_path):
    """A tuning sweep never scored the test set: --metric final_val_acc draws its validation
    curves (not empty test axes) and prints no best-epoch test line."""
    results = [tuning_result("step4", s, [97.0, 98.5, 99.0 + s / 10], 7_074) for s in range(3)]
    root = write_sweep(tmp_path / "s", results)
    plots = tmp_path / "plots"
    args = ("report", str(root), "--metric", "final_val_acc", "--plots", str(plots))
    proc = run_cli(*args, "--markdown", str(tmp_path / "r.md"))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in plots.iterdir()) == [
        "final_acc_vs_params.png", "performance.png", "val_acc_per_epoch.png"
    ]  # fmt: skip
    blue = (31, 119, 180)  # matplotlib's C0: the one group's mean line, band and seeds
    assert ink(plots / "val_acc_per_epoch.png", blue) > 500
    assert "best-epoch test" not in proc.stdout.lower()
    assert "best-epoch test" not in (tmp_path / "r.md").read_text().lower()
    # The same folder with test figures: test curves, and the labelled best-epoch line.
    for r in results:
        for h in r["history"]:
            h["test_acc"] = h["val_acc"]
        r.update(final_test_acc=r["final_val_acc"], best_test_acc=r["final_val_acc"])
    root = write_sweep(tmp_path / "t", results)
    proc = run_cli("report", str(root), "--plots", str(tmp_path / "p2"))
    assert proc.returncode == 0, proc.stderr
    assert ink(tmp_path / "p2" / "test_acc_per_epoch.png", blue) > 500
    assert "best-epoch test accuracy" in proc.stdout


def test_metric_other_than_accuracy_counts_no_seeds_at_target(tmp_path):
    results = synthetic_results(seeds=2)
    for i, r in enumerate(results):
        r["wall_seconds"] = 100.0 + i
    root = write_sweep(tmp_path / "s", results)
    proc = run_cli("report", str(root), "--metric", "wall_seconds", "--json")
    assert proc.returncode == 0, proc.stderr
    groups = json.loads(proc.stdout)["groups"]
    assert [g["values"] for g in groups] == [[100.0, 101.0], [102.0, 103.0]]
    assert all(g["n_at_target"] is None for g in groups)


@pytest.mark.parametrize(
    "metric, fragment",
    [
        ("colour", "--metric 'colour' is absent from all 2 finished runs' result.json"),
        ("final_val_acc", "--metric 'final_val_acc' is null or not a number in all 2"),
    ],
)
def test_unknown_metric_is_one_line_listing_the_numeric_keys(tmp_path, metric, fragment):
    results = synthetic_results(seeds=1)
    for r in results:
        r["final_val_acc"] = None
    root = write_sweep(tmp_path / "s", results)
    proc = run_cli("report", str(root), "--metric", metric)
    assert_one_line_error(proc, fragment, "numeric keys: ", "final_test_acc")


def test_ema_runs_show_both_weights_and_name_the_headline(tmp_path):
    results = synthetic_results(seeds=3)[3:]  # step4 seeds 0-2
    for i, r in enumerate(results):
        r.update(headline="ema", final_model_test_acc=99.1 + i / 10, final_ema_test_acc=99.3)
    root = write_sweep(tmp_path / "s", results)
    proc = run_cli("report", str(root), "--markdown", str(tmp_path / "r.md"))
    assert proc.returncode == 0, proc.stderr
    line = "final test accuracy, model weights 99.20 ± 0.10 (n=3), EMA weights 99.30"
    assert line in proc.stdout and "(headline: ema)" in proc.stdout
    assert line in (tmp_path / "r.md").read_text()
    (g,) = json.loads(run_cli("report", str(root), "--json").stdout)["groups"]
    assert g["weights"]["model"]["mean"] == pytest.approx(99.2) and g["weights"]["split"] == "test"


def test_missing_lines_say_a_bare_state_once_and_a_failure_with_its_error():
    missing = [
        dict(trial_id="a", status="pending", reason="pending", path="s/a"),
        dict(trial_id="b", status="failed", reason="RuntimeError: OOM", path="s/b"),
    ]
    assert missing_lines(missing) == [
        "missing or failed trials: 2",
        "  a: pending (s/a)",
        "  b: failed: RuntimeError: OOM (s/b)",
    ]


def test_split_by_machine_gives_each_cpu_its_own_row_and_pools_without_it(tmp_path):
    """--split cpu_model: one config run on two machines is two rows, each with its seeds;
    without it the seeds pool (machine is not part of a trial's identity)."""
    results = [fake_result("step4", s, [99.0 + s / 10], 7_074) for s in range(4)]
    for r in results:
        r["cpu_model"] = "AMD EPYC" if r["seed"] < 2 else "Intel Xeon"
    root = write_sweep(tmp_path / "s", results)
    split = json.loads(run_cli("report", str(root), "--json", "--split", "cpu_model").stdout)
    rows = {g["label"]: (g["split"], g["seeds"], g["mean"]) for g in split["groups"]}
    assert rows == {
        "step4 [cpu_model=AMD EPYC]": ({"cpu_model": "AMD EPYC"}, [0, 1], pytest.approx(99.05)),
        "step4 [cpu_model=Intel Xeon]": ({"cpu_model": "Intel Xeon"}, [2, 3], pytest.approx(99.25)),
    }
    pooled = json.loads(run_cli("report", str(root), "--json").stdout)
    (g,) = pooled["groups"]
    assert g["seeds"] == [0, 1, 2, 3] and "split" not in g
    compared = run_cli("report", str(root), "--split", "cpu_model", "--compare",
                       "step4 [cpu_model=AMD EPYC]:step4 [cpu_model=Intel Xeon]")  # fmt: skip
    assert compared.returncode == 0, compared.stderr
    assert "comparisons of final-epoch test accuracy" in compared.stdout
    assert_one_line_error(
        run_cli("report", str(root), "--split", "gpu"), "--split gpu", "cpu_model"
    )
