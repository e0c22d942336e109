"""Seed statistics against numpy/scipy on synthetic results, n=1 and n=2 included.

PYTHONPATH=. python -m pytest tests/test_stats.py -q
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from mnist_dist.config import TARGET_ACC
from mnist_dist.report.stats import ACC_BOUNDS, NO_CI, group_stats, summarize

from .synthetic import fake_result


@pytest.mark.parametrize("n", [2, 3, 7, 20])
def test_summarize_matches_numpy_and_scipy(n):
    x = np.random.default_rng(n).normal(99.3, 0.1, size=n)
    s = summarize(list(x))
    assert s["n"] == n
    assert s["mean"] == pytest.approx(np.mean(x))
    assert s["variance"] == pytest.approx(np.var(x, ddof=1))
    assert s["std"] == pytest.approx(np.std(x, ddof=1))
    assert s["sem"] == pytest.approx(np.std(x, ddof=1) / np.sqrt(n))
    half = sps.t.ppf(0.975, n - 1) * np.std(x, ddof=1) / np.sqrt(n)
    assert s["ci95"] == pytest.approx([np.mean(x) - half, np.mean(x) + half])
    assert (s["min"], s["max"]) == (pytest.approx(x.min()), pytest.approx(x.max()))


def test_two_seeds_use_t_with_one_degree_of_freedom():
    s = summarize([99.2, 99.6])
    # t(0.975, df=1) = 12.706: two seeds give a very wide interval, as they should
    assert s["sem"] == pytest.approx(0.2)
    assert s["ci95"] == pytest.approx([99.4 - 12.7062 * 0.2, 99.4 + 12.7062 * 0.2], abs=1e-3)


def test_only_a_t_interval_that_leaves_0_100_gets_a_bounded_one():
    """A collapsed seed (9.8%) beside trained ones: the t-interval runs far outside
    [0, 100]; the bootstrap percentile interval lies within the seeds' range and holds the
    mean. The t-interval itself is unchanged, and a group inside [0, 100] gets nothing."""
    dead = [9.8, 98.9, 99.0, 99.1]
    s = summarize(dead, ACC_BOUNDS)
    assert s["ci95"] == summarize(dead)["ci95"] and s["ci95"][1] > 100
    lo, hi = s["ci95_bounded"]
    assert min(dead) <= lo < s["mean"] < hi <= max(dead)
    assert summarize(dead, ACC_BOUNDS)["ci95_bounded"] == [lo, hi]  # seeded: reproducible
    assert "ci95_bounded" not in summarize([99.2, 99.3, 99.4], ACC_BOUNDS)
    assert "ci95_bounded" in summarize([99.2, 99.9], ACC_BOUNDS)  # t(df=1) passes 100


def test_one_seed_has_no_spread_and_says_so():
    s = summarize([99.45])
    assert s["n"] == 1 and s["mean"] == 99.45 and s["min"] == s["max"] == 99.45
    assert s["variance"] is None and s["std"] is None and s["sem"] is None
    assert s["ci95"] is None and s["ci95_note"] == NO_CI


def test_equal_values_give_a_zero_width_interval_not_nan():
    s = summarize([99.5, 99.5, 99.5])
    assert s["std"] == 0.0 and s["ci95"] == [99.5, 99.5]


def test_group_stats_headline_is_the_final_epoch():
    rng = np.random.default_rng(0)
    results, finals = [], {"step2": [], "step10": []}
    for step, params in (("step10", 5_000), ("step2", 50_000)):
        for seed in range(5):
            accs = list(rng.normal([98.8, 99.5, 99.35], 0.1))  # peaks mid-run, then drops
            finals[step].append(accs[-1])
            results.append(fake_result(step, seed, accs, params))
    groups = group_stats(results, "step")
    assert [g["step"] for g in groups] == ["step2", "step10"]  # natural order
    for g in groups:
        x = np.array(finals[g["step"]])
        assert g["n"] == 5 and g["params"] == (50_000 if g["step"] == "step2" else 5_000)
        assert g["mean"] == pytest.approx(x.mean())
        assert g["std"] == pytest.approx(x.std(ddof=1))
        assert g["n_at_target"] == int((x >= TARGET_ACC).sum())
        assert g["final_test_acc"] == pytest.approx(list(x))  # in seed order
        # best epoch: kept apart and labelled, and higher than the headline here
        assert "test set" in g["best_epoch_test_acc"]["label"]
        assert g["best_epoch_test_acc"]["mean"] > g["mean"]


def test_first_epoch_at_target_and_n_at_target_count_different_things():
    results = [
        fake_result("step4", 0, [99.1, 99.5, 99.3], 7_000),  # reached at 2, final below
        fake_result("step4", 1, [99.0, 99.2, 99.45], 7_000),  # reached at 3, final above
        fake_result("step4", 2, [98.0, 99.0, 99.1], 7_000),  # never
    ]
    (g,) = group_stats(results, "step")
    assert g["n_at_target"] == 1
    assert g["n_reached_target_any_epoch"] == 2
    assert g["mean_first_epoch_at_target"] == pytest.approx(2.5)
    none = group_stats([results[2]], "step")[0]
    assert none["mean_first_epoch_at_target"] is None and none["ci95"] is None


def test_group_by_another_config_key():
    results = [fake_result("step4", s, [99.0 + s / 10], 7_000) for s in range(4)]
    results[0]["config"]["lr"] = results[1]["config"]["lr"] = 0.01
    groups = group_stats(results, "lr")
    assert [(g["lr"], g["n"]) for g in groups] == [(0.01, 2), (0.018, 2)]
    assert groups[0]["mean"] == pytest.approx(99.05)
