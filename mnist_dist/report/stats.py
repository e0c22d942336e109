"""Seed statistics of a sweep: per group, the spread of final-epoch test accuracy.

The headline is the test accuracy after the last epoch, the number a run really delivers.
The best epoch's accuracy is chosen by looking at the test set, so it is optimistic; it is
reported apart, under a label that says so. Accuracies are in percent.

Used by ``mnist-dist report`` (see ``mnist_dist.report.report``); no command of its own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from ..config import SPEED_ONLY, TARGET_ACC, TrainConfig, digest, identity_value
from ..errors import UserError
from ..rundir import COLLAPSED_BELOW, collapsed, result_config

CI_LEVEL = 0.95
NO_CI = "n=1: one seed gives no variance, std, sem or CI"
BEST_LABEL = "best epoch, picked on the test set: optimistic, not the headline"
DEFAULT_METRIC = "final_test_acc"
METRIC_LABELS = {  # what a --metric is, in the report's titles and headers
    "final_test_acc": "final-epoch test accuracy (%)",
    "final_val_acc": "final-epoch validation accuracy (%)",
    "best_test_acc": "best-epoch test accuracy (%, picked on the test set: optimistic)",
    "wall_seconds": "wall time (s)",
    "train_seconds": "training time (s)",
}
METRIC_HINTS = {"final_val_acc": "trained without --val-split?"}
ACC_BOUNDS = (0.0, 100.0)  # a percent accuracy's range: a CI of its mean stays inside it
BOOT_RESAMPLES, BOOT_SEED = 9999, 0  # the bounded interval's bootstrap: fixed, reproducible
BOUNDED = "bootstrap"  # its label in the tables
BOUNDED_NOTE = (
    f"{BOUNDED}: the Student-t interval leaves [0, 100] (a collapsed seed, or two seeds far "
    f"apart); the CI shown is the bootstrap percentile interval of the mean ({BOOT_RESAMPLES:,} "
    f"resamples, seed {BOOT_SEED}), which stays within the seeds' range"
)


def summarize(values: Sequence[float], bounds: tuple[float, float] | None = None) -> dict[str, Any]:
    """n, mean, sample variance (ddof=1), std, sem, 95% Student-t CI, min and max.

    With one value the spread is undefined: those fields are ``None`` and ``ci95_note``
    says why. With equal values the spread is 0 and the CI collapses to the mean. Where
    the t-interval leaves ``bounds`` (an accuracy's [0, 100]), ``ci95_bounded`` adds the
    bootstrap percentile interval (``BOUNDED_NOTE``); ``ci95`` stays the t-interval.
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
    if bounds and (lo < bounds[0] or hi > bounds[1]):
        rng = np.random.default_rng(BOOT_SEED)
        boot = stats.bootstrap((x,), np.mean, confidence_level=CI_LEVEL, method="percentile",
                               n_resamples=BOOT_RESAMPLES, rng=rng)  # fmt: skip
        ci = boot.confidence_interval
        out["ci95_bounded"] = [float(ci.low), float(ci.high)]
    return out


def shown_ci(s: dict[str, Any]) -> list[float] | None:
    """The CI a table or plot shows: the bounded one where the t-interval leaves [0, 100]."""
    return s.get("ci95_bounded") or s.get("ci95")


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, f"{metric} (from result.json)")


def is_accuracy(metric: str) -> bool:
    """Percent accuracies (``*_acc``): these have a 99.4% target to count seeds against."""
    return metric.endswith("_acc")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def split_by_metric(
    results: list[dict[str, Any]], metric: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(runs that record ``metric`` as a number, a ``missing`` entry for each that does not).

    A metric no run records is a UserError that lists the numeric keys they do record.
    """
    have = [r for r in results if _number(r.get(metric))]
    if not have:
        keys = sorted({k for r in results for k, v in r.items() if _number(v) and k[0] != "_"})
        held = "null or not a number in" if any(metric in r for r in results) else "absent from"
        raise UserError(
            f"--metric {metric!r} is {held} all {len(results)} finished runs' result.json; "
            f"numeric keys: {', '.join(keys)}"
        )
    lacking = []
    for r in results:
        if _number(r.get(metric)):
            continue
        value = "absent" if metric not in r else json.dumps(r[metric])
        hint = f" ({METRIC_HINTS[metric]})" if metric in METRIC_HINTS else ""
        lacking.append(
            dict(
                trial_id=r.get("trial_id"),
                path=r.get("_source", "?"),
                status="no metric",
                reason=f"{metric} is {value} in result.json{hint}",
            )
        )
    return have, lacking


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


def identity_of(result: dict[str, Any]) -> dict[str, Any]:
    """The run's identity (what its trial id hashes). Keys an older config lacks count as
    their defaults; a config this version cannot resolve (an unknown step) is taken as is."""
    try:
        return result_config(result).identity()
    except UserError:
        raw = {k: v for k, v in result["config"].items() if k not in SPEED_ONLY}
        return {"world_size": result.get("world_size") or 1, **raw}


@dataclass
class Group:
    """The seeds of one config: what the report gives one row."""

    label: str  # the --by value, plus the keys that set it apart from its --by siblings
    value: Any  # the --by value
    identity: dict[str, Any]  # less the seed
    runs: list[dict[str, Any]] = field(default_factory=list)
    split: dict[str, Any] | None = None  # {KEY: value} of ``--split KEY``, a result.json field


def config_groups(
    results: list[dict[str, Any]], by: str, split: str | None = None
) -> tuple[list[Group], list[str]]:
    """Group runs by config (their identity less the seed), never by label alone; with
    ``split``, also by that result.json field (``cpu_model``: one row per machine).

    Returns the groups, ordered by ``--by`` value then label, and one warning line per
    ``--by`` value that holds several configs and per seed counted once of two runs.
    """
    groups: dict[str, Group] = {}
    for r in results:
        ident = {k: v for k, v in identity_of(r).items() if k != "seed"}
        part = {split: r.get(split)} if split else None
        key = json.dumps([ident, part], sort_keys=True, default=str)
        value = ident.get(by, r["config"].get(by))
        groups.setdefault(key, Group(str(value), value, ident, split=part)).runs.append(r)
    warnings = [w for g in groups.values() for w in dedupe_seeds(g)]
    siblings: dict[str, list[Group]] = {}
    for g in groups.values():
        siblings.setdefault(json.dumps([g.value, g.split], default=str), []).append(g)
    for same in siblings.values():
        if len(same) < 2:
            continue
        keys = sorted({k for g in same for k in g.identity if not _all_equal(same, k)})
        for g in same:
            g.label = f"{g.value} ({', '.join(_differences(g.identity, keys))})"
        warnings.append(
            f"{by}={same[0].value} holds {len(same)} configs (they differ in "
            f"{', '.join(keys)}): reported as separate rows, never pooled"
        )
    if split:
        for g in groups.values():
            g.label += f" [{split}={g.split[split]}]"
    ordered = sorted(groups.values(), key=lambda g: (group_key(g.value), g.label))
    return ordered, list(dict.fromkeys(warnings))  # split siblings repeat a "holds" line


def _all_equal(groups: list[Group], key: str) -> bool:
    return len({json.dumps(g.identity.get(key)) for g in groups}) == 1


def _differences(identity: dict[str, Any], keys: list[str]) -> list[str]:
    """``lr=0.05``-style parts; where the step differs, its name alone stands for its
    recipe, and a key is named only where it departs from that recipe."""
    recipe: dict[str, Any] = {}
    if "step" in keys:
        try:
            recipe = TrainConfig(step=identity["step"]).identity()
        except UserError:  # a step this version does not know: name every key
            pass
    parts = [str(identity["step"])] if "step" in keys else []
    for k in keys:
        value = identity_value(identity, k)
        if k != "step" and (not recipe or value != identity_value(recipe, k)):
            parts.append(f"{k}={value}")
    return parts


def dedupe_seeds(group: Group) -> list[str]:
    """One run per seed: the newest (``_time``, a result.json's mtime) stays; a warning
    names both."""
    newest: dict[Any, dict[str, Any]] = {}
    warnings = []
    for r in sorted(group.runs, key=lambda r: r.get("_time", 0.0)):
        seed = r.get("seed", r["config"].get("seed"))
        if seed in newest:
            old = newest[seed]
            warnings.append(
                f"seed {seed} of {group.label} appears twice ({old.get('_source')}, "
                f"{r.get('_source')}): counted once, the newest ({r.get('_source')})"
            )
        newest[seed] = r
    group.runs = list(newest.values())
    return warnings


def group_stats(
    results: list[dict[str, Any]], by: str = "step", metric: str = DEFAULT_METRIC
) -> list[dict[str, Any]]:
    """One dict per config group, ordered by ``by``; see ``summarize`` for the fields.

    Each result is a ``result.json`` dict (``config``, ``final_test_acc``, ``history``...).
    """
    return [one_group(by, g, metric) for g in config_groups(results, by)[0]]


def one_group(by: str, group: Group, metric: str = DEFAULT_METRIC) -> dict[str, Any]:
    """The statistics of ``metric`` (default the final-epoch test accuracy) over the group's
    seeds; every run must record it (see ``split_by_metric``)."""
    runs = sorted(group.runs, key=lambda r: (r.get("seed", 0), r.get("trial_id", "")))
    values = [float(r[metric]) for r in runs]
    first = [r["first_epoch_at_target"] for r in runs if r.get("first_epoch_at_target")]
    train = [float(r["history"][-1]["train_acc"]) for r in runs if r.get("history")]
    best = [float(r["best_test_acc"]) for r in runs if r.get("best_test_acc") is not None]
    row: dict[str, Any] = {"by": by, by: group.value} if by != "step" else {"by": by}
    row.update(label=group.label, config_hash=digest(group.identity))
    row.update({"split": group.split} if group.split else {})
    row.update(
        step=one_or_list(r["step"] for r in runs), params=one_or_list(r["params"] for r in runs)
    )
    row.update(metric=metric, **summarize(values, ACC_BOUNDS if is_accuracy(metric) else None))
    row.update(
        # seeds whose metric (by default the FINAL test acc) is >= 99.4; None for non-accuracies
        n_at_target=sum(a >= TARGET_ACC for a in values) if is_accuracy(metric) else None,
        target=TARGET_ACC,
        # seeds that end below COLLAPSED_BELOW (dead nets); they count in n and the stats
        n_collapsed=sum(map(collapsed, values)) if is_accuracy(metric) else None,
        collapsed_below=COLLAPSED_BELOW,
        # over the seeds that reached the target at any epoch; None when none did
        mean_first_epoch_at_target=float(np.mean(first)) if first else None,
        n_reached_target_any_epoch=len(first),
        epochs=one_or_list(r["epochs"] for r in runs),
        seeds=[r.get("seed") for r in runs],
        values=values,  # behind the statistics, in seed order
        **({DEFAULT_METRIC: values} if metric == DEFAULT_METRIC else {}),  # the older name
        trials=[r.get("trial_id") for r in runs],
        train_acc=summarize(train) if train else None,  # final epoch, augmented train set
        best_epoch_test_acc=dict(summarize(best), label=BEST_LABEL) if best else None,
        weights=both_weights(runs),
    )
    return row


def both_weights(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """With an EMA, both sets of weights' final accuracies (test, else validation) over the
    seeds, whichever the recipe's headline is; None without one."""
    for split in ("test", "val"):
        keys = {w: f"final_{w}_{split}_acc" for w in ("model", "ema")}
        if all(r.get(k) is not None for r in runs for k in keys.values()):
            out = {w: summarize([float(r[k]) for r in runs]) for w, k in keys.items()}
            return dict(out, split=split, headline=one_or_list(r.get("headline") for r in runs))
    return None


def fmt_ci(group: dict[str, Any], digits: int = 3) -> str:
    """``[lo, hi]``, or the reason there is none."""
    if group.get("ci95") is None:
        return "n/a (n=1)"
    lo, hi = shown_ci(group)
    label = f" {BOUNDED}" if group.get("ci95_bounded") else ""
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]{label}"


def bounded_lines(groups: list[dict[str, Any]]) -> list[str]:
    """The note under a table where a group's CI is the bounded one, with its t-interval."""
    hit = [g for g in groups if g.get("ci95_bounded")]
    if not hit:
        return []
    return [BOUNDED_NOTE + ":"] + [
        f"  {g['label']}: t-interval [{g['ci95'][0]:.3f}, {g['ci95'][1]:.3f}]" for g in hit
    ]


def fmt_mean_std(s: dict[str, Any] | None, digits: int = 2) -> str:
    """``mean ± std (n)``, the origin study's cell; one seed shows no ± part."""
    if not s:
        return "n/a"
    if s.get("std") is None or (isinstance(s["std"], float) and math.isnan(s["std"])):
        return f"{s['mean']:.{digits}f} (n={s['n']})"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} (n={s['n']})"
