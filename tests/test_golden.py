"""Golden files written by an older version (tests/fixtures/README.md): the committed
evidence, a single run's numbers and a queued job must not change under a refactor.
"""

from __future__ import annotations

import json

import pytest

from mnist_dist.cli import main as cli_main

from .conftest import REPO, make_tiny_mnist, run_cli, timeless

FIXTURES = REPO / "tests" / "fixtures"
REPORTS = {  # results/ folder -> extra report flags its golden file was written with
    "beyond": [],
    "bf16-check": [],
    "goal/search": ["--metric", "final_val_acc"],
    "goal/step7": [],
    "pack-check": [],
    "step4-seeds": [],
    "study-fp32-check": [],
    "study": [],
}


@pytest.mark.parametrize("folder", sorted(REPORTS))
def test_report_json_on_committed_evidence_matches_its_golden_file(folder, capsys):
    golden = json.loads(
        (FIXTURES / "report_golden" / f"{folder.replace('/', '-')}.json").read_text()
    )
    cli_main(["report", str(REPO / "results" / folder), "--json", *REPORTS[folder]])
    now = json.loads(capsys.readouterr().out)
    for group in now["groups"]:  # added since (issue #22): the collapsed seeds' count
        assert group.pop("collapsed_below") == 20.0
        values = group["values"]
        assert group.pop("n_collapsed") == sum(v < 20.0 for v in values), group["label"]
        # added since (issue #25): a bounded CI, only where the t-interval leaves [0, 100]
        lo, hi = group["ci95"] or (0.0, 100.0)
        bounded = group.pop("ci95_bounded", None)
        assert (bounded is not None) == (lo < 0 or hi > 100), group["label"]
        assert bounded is None or min(values) <= bounded[0] <= bounded[1] <= max(values)
    assert now == golden


@pytest.mark.slow
def test_a_single_runs_first_epochs_match_the_golden_float64_numbers(tmp_path):
    golden = json.loads((FIXTURES / "golden_step4_float64.json").read_text())
    data = make_tiny_mnist(tmp_path / "data")
    args = ["--step", "step4", "--seed", "0", "--epochs", "2", "--data-dir", str(data)]
    args += ["--no-download", "--cpu", "--threads", "1", "--no-progress"]
    proc = run_cli("train", *args, "--out", str(tmp_path / "run"),
                   env={"MNIST_DIST_TEST_FLOAT64": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    history = timeless(json.loads((tmp_path / "run" / "result.json").read_text())["history"])
    assert [row["epoch"] for row in history] == [1, 2]
    for row, want in zip(history, golden["history"], strict=True):
        assert row.keys() == want.keys()
        for key, value in want.items():
            assert row[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_a_trial_queued_by_an_older_version_still_unpickles():
    from submitit.core.utils import pickle_load

    submission = pickle_load(FIXTURES / "submitted_trial_2e901ab.pkl")
    trial = submission.function
    assert trial.trial_ids == ["step5-s0-d7f30dd7f5", "step5-s1-b09046c423"]
    assert [c["seed"] for c in trial.configs] == [0, 1]
    assert callable(trial) and hasattr(trial, "checkpoint")
