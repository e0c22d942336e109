"""``mnist-dist report --reference FILE``: the origin's figures beside ours, from one file.

PYTHONPATH=. python -m pytest tests/test_reference.py -q
"""

from __future__ import annotations

import json

import pytest

from mnist_dist.errors import UserError
from mnist_dist.report.reference import load_reference

from .conftest import REPO, assert_one_line_error, run_cli
from .synthetic import fake_result, write_sweep

ORIGIN = REPO / "results" / "study" / "origin.toml"


def test_committed_origin_file_holds_the_four_published_rows():
    ref = load_reference(ORIGIN)
    assert ref["label"] == "origin (one run, best epoch)"
    rows = {r["step"]: (r["params"], r["train_acc"], r["test_acc"]) for r in ref["rows"]}
    assert rows == {
        "step1": (190_442, 98.57, 98.95),
        "step2": (18_258, 99.17, 99.35),
        "step3": (6_270, 99.03, 99.34),
        "step4": (7_074, 98.94, 99.46),
    }
    assert all((r["runs"], r["epoch"]) == (1, "best") for r in ref["rows"])


def test_origin_parameter_counts_are_our_models():
    from mnist_dist.models import build_model, count_params

    for r in load_reference(ORIGIN)["rows"]:
        assert count_params(build_model(r["step"])) == r["params"], r["step"]


def test_reference_column_in_json_terminal_and_markdown(tmp_path):
    results = [fake_result("step4", s, [98.0, 99.2 + s / 10], 7_074) for s in range(2)]
    results.append(fake_result("step5", 0, [98.0, 99.3], 7_578))  # the origin has no step5
    root = write_sweep(tmp_path / "s", results)
    md = tmp_path / "r.md"
    args = ("report", str(root), "--reference", str(ORIGIN))
    proc = run_cli(*args, "--json")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    report = json.loads(proc.stdout)
    assert report["reference"]["file"] == str(ORIGIN) and len(report["reference"]["rows"]) == 4
    step4, step5 = report["groups"]
    assert step4["reference"]["test_acc"] == 99.46 and step4["reference"]["train_acc"] == 98.94
    assert step4["reference"]["tag"] == "one run, best epoch" and step5["reference"] is None
    proc = run_cli(*args, "--markdown", str(md))
    assert proc.returncode == 0, proc.stderr
    header = proc.stdout.splitlines()[1].split()
    assert header[header.index("mean") + 1 : header.index("mean") + 7] == (
        "origin (one run, best epoch) test".split()
    )
    assert "99.46" in proc.stdout.splitlines()[2]
    lines = md.read_text().splitlines()
    head = next(ln for ln in lines if ln.startswith("| step |"))
    assert head.startswith(
        "| step | params | train accuracy (%) | test accuracy (%) | "
        "origin (one run, best epoch) params | origin (one run, best epoch) train (%) | "
        "origin (one run, best epoch) test (%) | 95% CI |"
    )
    assert next(ln for ln in lines if ln.startswith("| step4 |")).startswith(
        "| step4 | 7,074 | 99.00 ± 0.00 (n=2) | 99.25 ± 0.07 (n=2) | 7,074 | 98.94 | 99.46 |"
    )
    assert next(ln for ln in lines if ln.startswith("| step5 |")).count("| — |") >= 3
    assert "not seed statistics" in md.read_text()


def test_rows_match_by_label_and_a_different_model_is_warned(tmp_path):
    results = [fake_result("step4", s, [99.0 + s / 10], 7_000) for s in range(2)]
    for r in results[1:]:
        r["config"]["lr"] = 0.05
        r["trial_id"] += "-lr"
    root = write_sweep(tmp_path / "s", results)
    ref = tmp_path / "ref.toml"
    ref.write_text(
        'name = "theirs"\n[[rows]]\nstep = "step4"\nlabel = "step4 (lr=0.05)"\n'
        'test_acc = 99.5\nruns = 3\nepoch = "final"\n'
        '[[rows]]\nstep = "step4"\nparams = 7074\ntest_acc = 99.1\nruns = 3\nepoch = "final"\n'
    )
    proc = run_cli("report", str(root), "--reference", str(ref), "--json")
    assert proc.returncode == 0, proc.stderr
    refs = {g["label"]: g["reference"]["test_acc"] for g in json.loads(proc.stdout)["groups"]}
    assert refs == {"step4 (lr=0.018)": 99.1, "step4 (lr=0.05)": 99.5}
    (warning,) = [ln for ln in proc.stderr.splitlines() if "parameters" in ln]
    assert "step4 (lr=0.018) has 7,000 parameters, theirs's step4 7,074" in warning
    assert "not the same model" in warning and "step4 (lr=0.05)" not in warning  # no params


@pytest.mark.parametrize(
    "text, fragment",
    [
        (None, "no such file"),
        (
            'name = "o"\n[[rows]]\nstep = "step4"\nruns = 1\nepoch = "best"\nbest = 1\n',
            "unknown key 'best' in rows[0]",
        ),
        (
            'name = "o"\n[[rows]]\nstep = "step4"\ntest_acc = "99.4"\nruns = 1\nepoch = "best"\n',
            "rows[0].test_acc must be a number",
        ),
        (
            'name = "o"\n[[rows]]\nstep = "step4"\nparams = 7074.5\nruns = 1\nepoch = "best"\n',
            "rows[0].params must be an integer",
        ),
        (
            'name = "o"\n[[rows]]\nstep = "step4"\nruns = 1\nepoch = "last"\n',
            "rows[0].epoch must be one of",
        ),
        ('name = "o"\n[[rows]]\nstep = "step4"\nepoch = "best"\n', "rows[0] lacks 'runs'"),
        (
            'name = "o"\n[[rows]]\nstep = "step4"\ntest_acc = 994\nruns = 1\nepoch = "best"\n',
            "is a percentage",
        ),
        ('name = "o"\ncolour = 1\n', "unknown key 'colour' in the top level"),
        ('name = "o"\n', "needs at least one [[rows]]"),
        ("name = \n", "invalid TOML"),
    ],
)
def test_bad_reference_file_names_it_and_the_problem(tmp_path, text, fragment):
    ref = tmp_path / "ref.toml"
    if text is not None:
        ref.write_text(text)
    with pytest.raises(UserError) as e:
        load_reference(ref)
    assert str(ref) in str(e.value) and fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_reference_file_is_one_line_from_the_cli(tmp_path):
    root = write_sweep(tmp_path / "s", [fake_result("step4", 0, [99.0], 7_074)])
    ref = tmp_path / "ref.toml"
    ref.write_text('name = "o"\n[[rows]]\nstep = "step4"\nruns = "1"\nepoch = "best"\n')
    proc = run_cli("report", str(root), "--reference", str(ref))
    assert_one_line_error(proc, str(ref), "rows[0].runs must be an integer, got '1'")
