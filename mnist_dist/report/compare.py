"""Pairs of report rows: the difference of means, its 95% CI, Welch's p, and the seeds needed.

    mnist-dist report DIR --compare                          # every pair of rows
    mnist-dist report DIR --compare step3:step4              # pairs named by row label
    mnist-dist report DIR --compare 'step4 (lr=0.01):step4 (lr=0.05)' --metric final_val_acc

For rows A and B (each the seeds of one config) this gives the difference of means A − B;
its 95% confidence interval with Welch–Satterthwaite degrees of freedom (variances not
assumed equal); Welch's two-sided p (``scipy.stats.ttest_ind(equal_var=False)``); a plain
verdict; and the seeds per group at which a two-sided test at α = 0.05 has 80% power for
the difference observed (Cohen's d with the pooled SD, ``statsmodels``
``TTestIndPower.solve_power``). That last figure rests on the observed difference, itself
noisy at a few seeds: a planning guide, not a promise. Each p is for its own pair; with
several pairs, some p < 0.05 are expected by chance alone (no correction is applied).

Used by ``mnist-dist report``; no command of its own.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from ..errors import UserError
from .stats import CI_LEVEL

ALPHA = 0.05
POWER = 0.8
POWER_NOTE = (
    f"seeds/group for {POWER:.0%} power: seeds per group at which a two-sided Welch test at "
    f"α = {ALPHA} detects the observed difference {POWER:.0%} of the time (Cohen's d, pooled "
    "SD; from the observed effect, so a rough planning figure)"
)


def split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside parentheses: ``step4 (lr=0.05, epochs=2)`` stays whole."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def parse_pairs(specs: Sequence[str], labels: Sequence[str]) -> list[tuple[str, str]]:
    """The (A, B) label pairs of ``--compare`` values; an empty value means every pair.

    Each value is ``A:B`` or several, comma-separated (``step1:step2,step3:step4``); a
    label may hold spaces (quote it in the shell) and commas inside its parentheses.
    """
    valid = f"valid labels: {', '.join(labels)}"
    if len(labels) < 2:
        raise UserError(f"--compare needs two rows or more; this report has one ({valid})")
    items = [it.strip() for spec in specs for it in split_top(spec, ",") if it.strip()]
    if not items:
        return list(itertools.combinations(labels, 2))
    pairs: list[tuple[str, str]] = []
    for item in items:
        parts = [p.strip().strip("'\"").strip() for p in split_top(item, ":")]
        if len(parts) != 2 or not all(parts):
            raise UserError(f"--compare {item!r}: expected A:B, two row labels; {valid}")
        for label in parts:
            if label not in labels:
                raise UserError(f"--compare: no row labelled {label!r}; {valid}")
        if parts[0] == parts[1]:
            raise UserError(f"--compare {item!r} compares a row with itself; name two rows")
        if tuple(parts) not in pairs:
            pairs.append((parts[0], parts[1]))
    return pairs


def welch_df_ci(x: np.ndarray, y: np.ndarray, level: float = CI_LEVEL) -> tuple[float, list]:
    """Welch–Satterthwaite df and the CI of mean(x) − mean(y), from the textbook formulas.

    Used where scipy is older than 1.11 (its ``TtestResult`` has no ``df`` or
    ``confidence_interval()`` there); tested against the same published figures.
    """
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    df = (va + vb) ** 2 / (va**2 / (len(x) - 1) + vb**2 / (len(y) - 1))
    half = stats.t.ppf(0.5 + level / 2, df) * math.sqrt(va + vb)
    diff = x.mean() - y.mean()
    return float(df), [float(diff - half), float(diff + half)]


def seeds_for_power(d: float | None) -> int | None:
    """Seeds per group for POWER at ALPHA (two-sided) at Cohen's d; None when d is 0 or unknown."""
    if d is None or not math.isfinite(d) or d <= 0:
        return None
    from statsmodels.stats.power import TTestIndPower

    analysis = TTestIndPower()
    # A root finder that cannot converge warns and returns nan; record=True keeps it off
    # stderr even though statsmodels sets its warnings to "always" when it loads them.
    with warnings.catch_warnings(record=True):
        n = float(np.asarray(analysis.solve_power(d, power=POWER, alpha=ALPHA, ratio=1.0)))
        # Very large d: the solver fails near n = 2 (and the noncentral t, past d ~ 20).
        # Power grows with d, so if d = 10 has it at two seeds, any larger d does.
        enough_at_2 = analysis.power(min(d, 10.0), nobs1=2, alpha=ALPHA, ratio=1.0) >= POWER
    if math.isfinite(n):
        return max(2, math.ceil(round(n, 6)))  # the smallest whole n reaching the power
    return 2 if enough_at_2 else None


def fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def p_is(p: float) -> str:
    """``p=0.031`` or ``p<0.001``, for prose."""
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _sizes(na: int, nb: int) -> str:
    return f"n={na} per group" if na == nb else f"n={na} vs {nb}"


def compare(a: str, xa: Sequence[float], b: str, xb: Sequence[float]) -> dict[str, Any]:
    """Rows ``a`` and ``b`` with values ``xa`` and ``xb``: Welch's test of A − B and the rest."""
    x, y = np.asarray(xa, dtype=float), np.asarray(xb, dtype=float)
    na, nb = len(x), len(y)
    out: dict[str, Any] = dict(a=a, b=b, n_a=na, n_b=nb, mean_a=float(x.mean()))
    out.update(mean_b=float(y.mean()), diff=float(x.mean() - y.mean()))
    out.update(ci95=None, df=None, t=None, p=None, cohens_d=None, seeds_per_group_for_80_power=None)
    if min(na, nb) < 2:
        one = " and ".join(lab for lab, n in ((a, na), (b, nb)) if n < 2)
        out["verdict"] = f"cannot tell: n=1 ({one}: one seed has no spread)"
        return out
    sa, sb = float(x.std(ddof=1)), float(y.std(ddof=1))
    pooled = math.sqrt(((na - 1) * sa**2 + (nb - 1) * sb**2) / (na + nb - 2))
    if pooled == 0:
        same = f"every seed scored the same within each group ({_sizes(na, nb)})"
        out["verdict"] = f"cannot tell: {same}"
        return out
    res = stats.ttest_ind(x, y, equal_var=False)
    if hasattr(res, "confidence_interval") and hasattr(res, "df"):  # scipy >= 1.11
        ci = res.confidence_interval(confidence_level=CI_LEVEL)
        df, interval = float(res.df), [float(ci.low), float(ci.high)]
    else:
        df, interval = welch_df_ci(x, y)
    p = float(res.pvalue)
    d = abs(out["diff"]) / pooled
    out.update(ci95=interval, df=df, t=float(res.statistic), p=p, cohens_d=d)
    out["seeds_per_group_for_80_power"] = seeds_for_power(d)
    if p < ALPHA:
        higher = a if out["diff"] > 0 else b
        out["verdict"] = f"differ ({p_is(p)}): {higher} higher by {abs(out['diff']):.3f}"
    else:
        out["verdict"] = f"no difference detected at {_sizes(na, nb)} ({p_is(p)})"
    return out


def compare_groups(groups: list[dict[str, Any]], specs: Sequence[str]) -> list[dict[str, Any]]:
    """One ``compare`` per pair named in ``specs`` (every pair if none), on each group's
    metric values (``g["values"]``)."""
    by_label = {g["label"]: g for g in groups}
    pairs = parse_pairs(specs, list(by_label))
    return [compare(a, by_label[a]["values"], b, by_label[b]["values"]) for a, b in pairs]


HEADER = ["A", "B", "n A", "n B", "mean A", "mean B", "A − B", "95% CI of A − B", "df", "t"]
HEADER += ["p", f"seeds/group for {POWER:.0%} power", "verdict"]


def rows(comparisons: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for c in comparisons:
        ci = c["ci95"]
        need = c["seeds_per_group_for_80_power"]
        out.append(
            [
                c["a"],
                c["b"],
                str(c["n_a"]),
                str(c["n_b"]),
                f"{c['mean_a']:.3f}",
                f"{c['mean_b']:.3f}",
                f"{c['diff']:+.3f}",
                f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "n/a",
                f"{c['df']:.1f}" if c["df"] is not None else "n/a",
                f"{c['t']:.2f}" if c["t"] is not None else "n/a",
                fmt_p(c["p"]),
                f"{need:,}" if need is not None else "n/a",
                c["verdict"],
            ]
        )
    return out


def notes(comparisons: list[dict[str, Any]]) -> list[str]:
    lines = [POWER_NOTE]
    if len(comparisons) > 1:
        lines.append(
            f"each p is for its own pair; over {len(comparisons)} pairs some p < {ALPHA} "
            "can arise by chance (no multiple-comparison correction)"
        )
    return lines


def render_text(comparisons: list[dict[str, Any]], what: str) -> list[str]:
    """Terminal lines: a title, an aligned table, the notes."""
    table = [HEADER, *rows(comparisons)]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    out = [f"comparisons of {what}: A − B, Welch's t-test (two-sided, unequal variances)"]
    for r in table:
        cells = [c.rjust(w) for c, w in zip(r[:-1], widths, strict=False)] + [r[-1]]
        out.append("  ".join(cells))
    return out + notes(comparisons)


def render_markdown(comparisons: list[dict[str, Any]], what: str) -> list[str]:
    out = [f"### Comparisons: {what}", ""]
    out += ["A − B, Welch's t-test (two-sided, unequal variances).", ""]
    out += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(r) + " |" for r in rows(comparisons)]
    return out + [""] + [f"- {n}" for n in notes(comparisons)]


def paired(
    a: str, runs_a: list[dict], b: str, runs_b: list[dict], metric: str, margin: float | None
) -> dict[str, Any]:
    """The same trials run twice (``--paired``): per-trial differences A − B of ``metric``.

    Runs pair by trial id, i.e. by config and seed, so each difference is only how the two
    runs ran (packed or not, another machine, another torch). Gives the mean difference with
    its 95% Student t CI, the paired t-test's p (``scipy.stats.ttest_rel``) and, as a check
    that ignores the pairing, Welch's p. With ``margin`` the verdict says whether the CI lies
    within ±margin points (an equivalence rule fixed in advance).
    """
    by_id = {r["trial_id"]: r for r in runs_b}
    ids = sorted(t for t in (r["trial_id"] for r in runs_a) if t in by_id)
    if not ids:
        raise UserError(f"--paired: no trial id of {a} is in {b}; pair runs of the same trials")
    a_by_id = {r["trial_id"]: r for r in runs_a}
    x = np.array([a_by_id[t][metric] for t in ids], dtype=float)
    y = np.array([by_id[t][metric] for t in ids], dtype=float)
    d = x - y
    n = len(d)
    rows = [
        dict(trial_id=t, a=float(u), b=float(v), diff=float(u - v))
        for t, u, v in zip(ids, x, y, strict=True)
    ]
    out: dict[str, Any] = dict(a=a, b=b, n=n, margin=margin, pairs=rows)
    out.update(mean_a=float(x.mean()), mean_b=float(y.mean()), mean_diff=float(d.mean()))
    out.update(only_a=sorted(set(a_by_id) - set(ids)), only_b=sorted(set(by_id) - set(ids)))
    out.update(sd_diff=None, ci95=None, p_paired=None, p_welch=None)
    if n < 2:
        out["verdict"] = "cannot tell: one pair has no spread"
        return out
    sd = float(d.std(ddof=1))
    out["sd_diff"] = sd
    if sd == 0:  # every pair differs by the same amount (often 0: bit-identical runs)
        out["ci95"] = [float(d.mean())] * 2
    else:
        lo, hi = stats.t.interval(CI_LEVEL, n - 1, loc=d.mean(), scale=sd / math.sqrt(n))
        out.update(ci95=[float(lo), float(hi)], p_paired=float(stats.ttest_rel(x, y).pvalue))
    if x.std(ddof=1) > 0 or y.std(ddof=1) > 0:
        out["p_welch"] = float(stats.ttest_ind(x, y, equal_var=False).pvalue)
    lo, hi = out["ci95"]
    ci = f"95% CI [{lo:+.3f}, {hi:+.3f}]"
    if margin is not None:
        inside = -margin <= lo and hi <= margin
        out["within_margin"] = inside
        out["verdict"] = (
            f"equivalent: {ci} lies within ±{margin:g}"
            if inside
            else f"not shown equivalent: {ci} reaches beyond ±{margin:g}"
        )
    elif out["p_paired"] is not None and out["p_paired"] < ALPHA:
        out["verdict"] = f"differ ({p_is(out['p_paired'])}, paired): {ci}"
    else:
        out["verdict"] = f"no difference detected at n={n} pairs: {ci}"
    return out


def render_paired(p: dict[str, Any], what: str, markdown: bool = False) -> list[str]:
    """The per-trial table and the summary line, for the terminal or Markdown."""
    head = ["trial", p["a"], p["b"], "A − B"]
    body = [
        [r["trial_id"], f"{r['a']:.2f}", f"{r['b']:.2f}", f"{r['diff']:+.2f}"] for r in p["pairs"]
    ]
    sd = f"{p['sd_diff']:.3f}" if p["sd_diff"] is not None else "n/a"
    summary = [
        f"mean A − B {p['mean_diff']:+.3f} (sd {sd}, n={p['n']} pairs); "
        f"paired t p={fmt_p(p['p_paired'])}; Welch p={fmt_p(p['p_welch'])}",
        f"verdict: {p['verdict']}",
    ]
    for side, key in ((p["a"], "only_a"), (p["b"], "only_b")):
        if p[key]:
            summary.append(f"unpaired, only in {side}: {', '.join(p[key])}")
    title = f"paired: {what}, A = {p['a']}, B = {p['b']}, runs of the same trial ids"
    if markdown:
        out = [
            f"### Paired: {what}",
            "",
            f"A = `{p['a']}`, B = `{p['b']}`: runs of the same trial ids.",
            "",
        ]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(r) + " |" for r in body]
        return out + [""] + [f"- {s}" for s in summary]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    out = [title] + [
        "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *body]
    ]
    return out + summary
