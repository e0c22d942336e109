"""``mnist-dist report --compare``: Welch's test against published and hand-worked figures.

PYTHONPATH=. python -m pytest tests/test_compare.py -q
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as sps

from mnist_dist.errors import UserError
from mnist_dist.report.compare import compare, parse_pairs, seeds_for_power, welch_df_ci

from .conftest import assert_one_line_error, run_cli
from .synthetic import fake_result, write_sweep

# Student (1908), the Cushny-Peebles sleep data: extra hours of sleep under two drugs, as R
# ships it (datasets::sleep, groups 1 and 2). R's own ?t.test example,
# t.test(extra ~ group, data = sleep), prints for Welch's test:
#   t = -1.8608, df = 17.776, p-value = 0.07939
#   95 percent confidence interval: -3.3654832  0.2054832;  means 0.75 and 2.33
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]

# Wikipedia, "Welch's t-test", Examples, example 1 (revision 994214781), whose data the
# Azure Data Explorer (Kusto) docs reuse for their welch_test() example, printing
# "pValue = 0.021". Wikipedia gives Welch's t = -2.46; its df we pin by the R example.
WIKI_A1 = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
WIKI_A2 = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]

# Worked by hand: A = 99.1, 99.2, 99.3 and B = 99.3, 99.4, 99.5.
#   means 99.2 and 99.4, A - B = -0.2; each sample variance (0.01 + 0 + 0.01) / 2 = 0.01
#   se^2 = 0.01/3 + 0.01/3 = 0.02/3, se = 0.0816497
#   t = -0.2 / 0.0816497 = -2.449490 (= -sqrt(6))
#   df = (0.02/3)^2 / ((0.01/3)^2/2 + (0.01/3)^2/2) = (4/9e4) / (1/9e4) = 4
#   two-sided p at df = 4 from the closed-form t CDF for 4 degrees of freedom,
#   F(t) = 1/2 + (3/8) x (1 - x^2/12) with x = t / sqrt(1 + t^2/4):
#     x = 2.449490 / sqrt(2.5) = 1.549193, F = 0.5 + 0.375 * 1.549193 * 0.8 = 0.964758,
#     p = 2 * (1 - 0.964758) = 0.070484
#   95% CI: t(0.975, 4) = 2.776 (any t table; 2.776445) x 0.0816497 = 0.226696,
#     so -0.2 +- 0.226696 = [-0.426696, +0.026696]
#   Cohen's d: pooled SD sqrt(0.01) = 0.1, d = 0.2 / 0.1 = 2.0
HAND_A, HAND_B = [99.1, 99.2, 99.3], [99.3, 99.4, 99.5]


def test_welch_matches_r_on_students_sleep_data():
    c = compare("drug1", SLEEP_1, "drug2", SLEEP_2)
    assert (c["mean_a"], c["mean_b"]) == pytest.approx((0.75, 2.33))
    assert c["t"] == pytest.approx(-1.8608, abs=5e-5)
    assert c["df"] == pytest.approx(17.776, abs=5e-4)
    assert c["p"] == pytest.approx(0.07939, abs=5e-6)
    assert c["ci95"] == pytest.approx([-3.3654832, 0.2054832], abs=5e-8)
    assert c["verdict"] == "no difference detected at n=10 per group (p=0.079)"


def test_welch_matches_wikipedias_example():
    c = compare("A1", WIKI_A1, "A2", WIKI_A2)
    assert round(c["t"], 2) == -2.46 and round(c["p"], 3) == 0.021
    assert c["verdict"] == "differ (p=0.021): A2 higher by 2.167"  # 22.987 - 20.820


def test_welch_matches_the_hand_worked_example():
    c = compare("A", HAND_A, "B", HAND_B)
    assert c["diff"] == pytest.approx(-0.2)
    assert c["t"] == pytest.approx(-2.449490, abs=1e-6)
    assert c["df"] == pytest.approx(4.0)
    assert c["p"] == pytest.approx(0.070484, abs=1e-6)
    assert c["ci95"] == pytest.approx([-0.426696, 0.026696], abs=2e-6)
    assert c["cohens_d"] == pytest.approx(2.0)


@pytest.mark.parametrize(
    "x, y, df, ci",
    [
        (SLEEP_1, SLEEP_2, 17.776, [-3.3654832, 0.2054832]),  # R, above
        (HAND_A, HAND_B, 4.0, [-0.426696, 0.026696]),  # by hand, above
    ],
)
def test_formula_fallback_for_old_scipy_gives_the_same_df_and_ci(x, y, df, ci):
    got_df, got_ci = welch_df_ci(np.array(x), np.array(y))
    assert got_df == pytest.approx(df, abs=5e-4)
    assert got_ci == pytest.approx(ci, abs=2e-6)


def test_seeds_for_80_percent_power_match_cohens_table():
    # Cohen (1992), "A power primer", Psychological Bulletin 112(1), Table 2: the n per
    # group for a two-sample t-test at two-sided alpha = .05 and power .80 is 64 for a
    # medium effect (d = .5) and 26 for a large one (d = .8). For d = .2 the table prints
    # 393 from an approximation; the exact noncentral-t answer is 393.4, hence 394.
    assert seeds_for_power(0.5) == 64
    assert seeds_for_power(0.8) == 26
    assert seeds_for_power(0.2) == 394
    assert seeds_for_power(0.0) is None and seeds_for_power(None) is None
    assert seeds_for_power(50.0) == 2  # the solver gives up there; two seeds already suffice


def test_too_few_seeds_or_no_spread_cannot_tell():
    c = compare("step3", [99.3], "step4", [99.1, 99.4])
    assert c["verdict"] == "cannot tell: n=1 (step3: one seed has no spread)"
    assert c["p"] is None and c["ci95"] is None and c["seeds_per_group_for_80_power"] is None
    c = compare("a", [99.3, 99.3], "b", [99.4, 99.4])
    assert c["verdict"].startswith("cannot tell: every seed scored the same")
    assert c["diff"] == pytest.approx(-0.1) and c["p"] is None


def test_parse_pairs_every_pair_named_pairs_and_labels_with_commas():
    labels = ["step3", "step4 (lr=0.01, momentum=0.8)", "step4 (lr=0.05, momentum=0.9)"]
    assert parse_pairs([""], labels) == [
        (labels[0], labels[1]),
        (labels[0], labels[2]),
        (labels[1], labels[2]),
    ]
    spec = f"{labels[0]}:{labels[1]}, '{labels[1]}':\"{labels[2]}\""
    assert parse_pairs([spec, f"{labels[0]}:{labels[1]}"], labels) == [
        (labels[0], labels[1]),
        (labels[1], labels[2]),
    ]
    for bad, fragment in [
        ("step3:step9", "no row labelled 'step9'"),
        ("step3", "expected A:B"),
        ("step3:step3", "with itself"),
    ]:
        with pytest.raises(UserError, match="valid labels|with itself") as e:
            parse_pairs([bad], labels)
        assert fragment in str(e.value)
    with pytest.raises(UserError, match="two rows or more"):
        parse_pairs([""], ["step4"])


def _sweep(tmp_path, groups: dict[str, list[float]], lrs: dict[str, float] | None = None):
    results = []
    for name, values in groups.items():
        step = name.split(":")[0]
        for seed, acc in enumerate(values):
            r = fake_result(step, seed, [98.0, acc], 7_074)
            if lrs and name in lrs:
                r["config"]["lr"] = lrs[name]
                r["trial_id"] += f"-lr{lrs[name]}"
            results.append(r)
    return write_sweep(tmp_path / "s", results)


def test_cli_compare_named_pair_in_json_terminal_and_markdown(tmp_path):
    root = _sweep(tmp_path, {"step3": HAND_A, "step4": HAND_B, "step5": [99.0]})
    proc = run_cli("report", str(root), "--compare", "step3:step4", "--json")
    assert proc.returncode == 0, proc.stderr
    (c,) = json.loads(proc.stdout)["comparisons"]
    assert (c["a"], c["b"], c["n_a"], c["n_b"]) == ("step3", "step4", 3, 3)
    assert c["diff"] == pytest.approx(-0.2) and c["df"] == pytest.approx(4.0)
    assert c["p"] == pytest.approx(0.070484, abs=1e-6)
    assert c["seeds_per_group_for_80_power"] == 6  # d = 2.0; statsmodels: n = 5.09
    md = tmp_path / "r.md"
    proc = run_cli(
        "report", str(root), "--compare", "step3:step4,step3:step5", "--markdown", str(md)
    )
    assert proc.returncode == 0, proc.stderr
    assert "comparisons of final-epoch test accuracy (%)" in proc.stdout
    assert "no difference detected at n=3 per group (p=0.070)" in proc.stdout
    assert "cannot tell: n=1 (step5: one seed has no spread)" in proc.stdout
    assert "over 2 pairs some p < 0.05 can arise by chance" in proc.stdout
    text = md.read_text()
    assert "### Comparisons: final-epoch test accuracy (%)" in text
    assert "| step3 | step4 | 3 | 3 | 99.200 | 99.400 | -0.200 | [-0.427, +0.027] | 4.0 |" in text


def test_cli_compare_every_pair_and_labels_with_spaces(tmp_path):
    lrs = {"step4:a": 0.01, "step4:b": 0.05}
    root = _sweep(tmp_path, {"step3": HAND_A, "step4:a": HAND_B, "step4:b": HAND_B}, lrs)
    proc = run_cli("report", str(root), "--compare", "--json")
    assert proc.returncode == 0, proc.stderr
    pairs = [(c["a"], c["b"]) for c in json.loads(proc.stdout)["comparisons"]]
    assert pairs == [
        ("step3", "step4 (lr=0.01)"),
        ("step3", "step4 (lr=0.05)"),
        ("step4 (lr=0.01)", "step4 (lr=0.05)"),
    ]
    proc = run_cli("report", str(root), "--json", "--compare", "step4 (lr=0.01):step4 (lr=0.05)")
    (c,) = json.loads(proc.stdout)["comparisons"]
    assert c["diff"] == 0.0 and c["p"] == pytest.approx(1.0)
    assert c["seeds_per_group_for_80_power"] is None  # no observed difference to detect


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--compare", "step3:step9"], "no row labelled 'step9'; valid labels: step3, step4"),
        (["--compare", "step3-step4"], "expected A:B"),
    ],
)
def test_cli_compare_bad_pairs_are_one_line(tmp_path, args, fragment):
    root = _sweep(tmp_path, {"step3": HAND_A, "step4": HAND_B})
    assert_one_line_error(run_cli("report", str(root), *args), fragment)


def test_cli_compare_before_the_folder_says_where_the_folder_goes(tmp_path):
    root = _sweep(tmp_path, {"step3": HAND_A, "step4": HAND_B})
    assert_one_line_error(run_cli("report", "--compare", str(root)), "put DIR first")


def _runs(tmp_path, name: str, accs: list[float]):
    """A folder of step5 runs, seeds 0..n-1, final test accuracy ``accs`` (same ids per seed)."""
    return write_sweep(
        tmp_path / name, [fake_result("step5", s, [98.0, a], 7_578) for s, a in enumerate(accs)]
    )


def test_cli_paired_matches_the_textbook_paired_t_and_names_unpaired_runs(tmp_path):
    a = [99.30, 99.34, 99.28, 99.25, 99.31]
    b = [99.28, 99.33, 99.30, 99.21, 99.27, 99.40]  # seed 5 has no partner in A
    proc = run_cli(
        "report", str(_runs(tmp_path, "a", a)), "--paired", str(_runs(tmp_path, "b", b)), "--json"
    )
    assert proc.returncode == 0, proc.stderr
    p = json.loads(proc.stdout)["paired"]
    d = np.array(a) - np.array(b[:5])
    half = 2.776445 * d.std(ddof=1) / np.sqrt(5)  # t(0.975, df=4), from a printed t table
    assert p["n"] == 5 and p["mean_diff"] == pytest.approx(d.mean())
    assert p["ci95"] == pytest.approx([d.mean() - half, d.mean() + half], abs=1e-6)
    t = d.mean() / (d.std(ddof=1) / np.sqrt(5))
    assert p["p_paired"] == pytest.approx(2 * sps.t.sf(abs(t), 4))
    assert p["p_welch"] == pytest.approx(sps.ttest_ind(a, b[:5], equal_var=False).pvalue)
    assert [r["diff"] for r in p["pairs"]] == pytest.approx(list(d))
    assert p["only_b"] == ["step5-s5-synthetic"] and p["only_a"] == []
    text = run_cli("report", str(tmp_path / "a"), "--paired", str(tmp_path / "b")).stdout
    assert "unpaired, only in" in text and "step5-s5-synthetic" in text
    assert "no difference detected at n=5 pairs" in text


def test_cli_paired_margin_verdict_both_ways_and_in_markdown(tmp_path):
    base = [99.30, 99.34, 99.28, 99.25, 99.31]
    near = [x + e for x, e in zip(base, [0.01, -0.01, 0.0, 0.02, -0.01], strict=True)]
    far = [x - 0.08 + e for x, e in zip(base, [0.01, -0.01, 0.0, 0.02, -0.01], strict=True)]
    ref = _runs(tmp_path, "ref", base)
    md = tmp_path / "r.md"
    args = ["--paired", str(ref), "--margin", "0.05", "--markdown", str(md)]
    proc = run_cli("report", str(_runs(tmp_path, "near", near)), *args)
    assert proc.returncode == 0, proc.stderr
    assert "verdict: equivalent: 95% CI [" in proc.stdout and "lies within ±0.05" in proc.stdout
    assert "### Paired: final-epoch test accuracy (%)" in md.read_text()
    proc = run_cli(
        "report", str(_runs(tmp_path, "far", far)), "--paired", str(ref), "--margin", "0.05"
    )
    assert "not shown equivalent" in proc.stdout and "reaches beyond ±0.05" in proc.stdout


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--margin", "0.05"], "--margin POINTS needs --paired OTHER"),
        (["--paired", "nowhere"], "--paired nowhere: no such folder"),
        (["--paired", "OTHER"], "no trial id of"),
    ],
)
def test_cli_paired_bad_input_is_one_line(tmp_path, extra, fragment):
    root = _runs(tmp_path, "a", [99.3, 99.2])
    other = write_sweep(tmp_path / "o", [fake_result("step4", 0, [98.0, 99.1], 7_074)])
    extra = [str(other) if x == "OTHER" else x for x in extra]
    assert_one_line_error(run_cli("report", str(root), *extra, cwd=tmp_path), fragment)
