"""Seed statistics of a sweep: per group, the spread of final-epoch test accuracy.

The headline is the test accuracy after the last epoch, the number a run really delivers.
The best epoch's accuracy is chosen by looking at the test set, so it is optimistic; it is
reported apart, under a label that says so. Accuracies are in percent.

Used by ``mnist-dist report`` (see ``mnist_dist.report``); no command of its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import stats

from .config import TARGET_ACC

CI_LEVEL = 0.95
NO_CI = "n=1: one seed gives no variance, std, sem or CI"
BEST_LABEL = "best epoch, picked on the test set: optimistic, not the headline"


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, sample variance (ddof=1), std, sem, 95% Student-t CI, min and max.

    With one value the spread is undefined: those fields are ``None`` and ``ci95_note``
    says why. With equal values the spread is 0 and the CI collapses to the mean.
    """
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        raise ValueError("no values to summarize")
    out: dict[str, Any] = dict(n=n, mean=float(x.mean()), min=float(x.min()), max=float(x.max()))
    if n < 2:
        out.update(variance=None, std=None, sem=None, ci95=None, ci95_note=NO_CI)
        return out
    sem = float(stats.sem(x))  # std / sqrt(n), ddof=1
    if sem > 0:
        lo, hi = stats.t.interval(CI_LEVEL, df=n - 1, loc=out["mean"], scale=sem)
    else:  # scipy returns nan for scale 0; the interval is the single value
        lo = hi = out["mean"]
    out.update(
        variance=float(x.var(ddof=1)),
        std=float(x.std(ddof=1)),
        sem=sem,
        ci95=[float(lo), float(hi)],
    )
    return out


def group_key(value: Any) -> tuple:
    """Sort groups naturally: numbers by value, strings like ``step10`` after ``step9``."""
    if isinstance(value, bool) or value is None:
        return (0, str(value), 0)
    if isinstance(value, (int, float)):
        return (1, "", float(value))
    text = str(value)
    stem = text.rstrip("0123456789")
    digits = text[len(stem) :]
    return (2, stem, int(digits) if digits else -1)


def one_or_list(values: Iterable[Any]) -> Any:
    """The single value when all agree, else the sorted distinct values."""
    distinct = sorted(set(values), key=group_key)
    return distinct[0] if len(distinct) == 1 else distinct


def group_stats(results: list[dict[str, Any]], by: str = "step") -> list[dict[str, Any]]:
    """One dict per value of config key ``by``, sorted; see ``summarize`` for the fields.

    Each result is a ``result.json`` dict (``config``, ``final_test_acc``, ``history``...).
    """
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(r["config"].get(by), []).append(r)
    rows = []
    for value in sorted(groups, key=group_key):
        rows.append(one_group(by, value, groups[value]))
    return rows


def one_group(by: str, value: Any, runs: list[dict[str, Any]]) -> dict[str, Any]:
    runs = sorted(runs, key=lambda r: (r.get("seed", 0), r.get("trial_id", "")))
    final = [float(r["final_test_acc"]) for r in runs]
    first = [r["first_epoch_at_target"] for r in runs if r.get("first_epoch_at_target")]
    train = [float(r["history"][-1]["train_acc"]) for r in runs if r.get("history")]
    best = [float(r["best_test_acc"]) for r in runs if r.get("best_test_acc") is not None]
    row: dict[str, Any] = {"by": by, by: value} if by != "step" else {"by": by}
    row.update(
        step=one_or_list(r["step"] for r in runs), params=one_or_list(r["params"] for r in runs)
    )
    row.update(summarize(final))
    row.update(
        n_at_target=sum(a >= TARGET_ACC for a in final),  # seeds whose FINAL acc >= 99.4
        target=TARGET_ACC,
        # over the seeds that reached the target at any epoch; None when none did
        mean_first_epoch_at_target=float(np.mean(first)) if first else None,
        n_reached_target_any_epoch=len(first),
        epochs=one_or_list(r["epochs"] for r in runs),
        seeds=[r.get("seed") for r in runs],
        final_test_acc=final,
        trials=[r.get("trial_id") for r in runs],
        train_acc=summarize(train) if train else None,  # final epoch, augmented train set
        best_epoch_test_acc=dict(summarize(best), label=BEST_LABEL) if best else None,
    )
    return row


def fmt_ci(group: dict[str, Any], digits: int = 3) -> str:
    """``[lo, hi]``, or the reason there is none."""
    if group.get("ci95") is None:
        return "n/a (n=1)"
    lo, hi = group["ci95"]
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def fmt_mean_std(s: dict[str, Any] | None, digits: int = 2) -> str:
    """``mean ± std (n)``, the origin study's cell; one seed shows no ± part."""
    if not s:
        return "n/a"
    if s.get("std") is None or (isinstance(s["std"], float) and math.isnan(s["std"])):
        return f"{s['mean']:.{digits}f} (n={s['n']})"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} (n={s['n']})"
