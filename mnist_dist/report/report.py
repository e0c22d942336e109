"""Seed statistics of a sweep, per group: a terminal table, JSON, Markdown and PNG plots.

    mnist-dist report runs/sweeps/smoke
    mnist-dist report runs/sweeps/smoke --json
    mnist-dist report runs/sweeps/smoke --markdown report.md --plots plots/ --by lr
    mnist-dist report --wandb ENTITY/PROJECT --group smoke [--log-to-wandb]
    mnist-dist report runs/sweeps/study --compare step3:step4 --reference results/study/origin.toml
    mnist-dist report runs/sweeps/tune --metric final_val_acc --compare
    mnist-dist report results/pack-check --paired results/beyond --margin 0.05

The headline is the final-epoch test accuracy (percent) over seeds: n, mean, variance
(ddof=1), std, sem, 95% Student-t CI, min, max, seeds at the 99.4% target, and the mean
first epoch at target. ``--metric KEY`` takes any number result.json records instead (a
tuning run's ``final_val_acc``), named as such in every title. Best-epoch numbers are picked
on the test set and appear only under a label saying so. Expected trials without a result
(from ``sweep.json``), failed trials (``error.txt``), runs without the metric and unreadable
``result.json`` files are counted and named. ``--compare`` tests pairs of rows
(``report.compare``); ``--paired OTHER`` sets each run beside the run of the same trial id
in another folder (the same trials, run another way); ``--reference FILE`` sets another
study's figures beside ours (``report.reference``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from ..config import TARGET_ACC, TrainConfig
from ..errors import ArgumentParser, UserError, cli_errors
from ..fsio import dumps, write_text
from ..rundir import RESULT, read_result
from ..sweeps.state import dir_record, trial_states
from . import compare, reference
from .stats import (
    BEST_LABEL,
    DEFAULT_METRIC,
    bounded_lines,
    config_groups,
    fmt_ci,
    fmt_mean_std,
    metric_label,
    one_group,
    split_by_metric,
)


def load_dir(root: Path) -> tuple[str, list[dict], list[dict], list[dict]]:
    """(name, results, missing, corrupt) of a sweep folder or any folder of runs.

    Trial states come from ``sweeps.state.trial_states``, as in ``mnist-dist status``;
    ``missing`` holds every trial that is not done, with its state and reason.
    """
    record = dir_record(root)
    results, missing, corrupt = [], [], []
    for row in trial_states(root, record):
        entry = dict(trial_id=row["trial_id"], path=row["path"])
        if row["state"] == "done":
            path = Path(row["path"]) / RESULT
            try:
                result = read_result(path)
                results.append(dict(result, _source=str(path.parent), _time=path.stat().st_mtime))
                continue
            except (ValueError, OSError) as e:  # replaced or torn since trial_states read it
                row.update(state="corrupt", error=f"corrupted result.json: {e}")
        reason = row["error"] or row["state"]
        entry.update(status=row["state"], reason=reason.removeprefix("corrupted result.json: "))
        (corrupt if row["state"] == "corrupt" else missing).append(entry)
    return str(record.get("name") or root.name), results, missing + corrupt, corrupt


def table_rows(groups: list[dict[str, Any]], by: str) -> list[list[str]]:
    """The terminal and W&B table: one row per group, headline numbers only."""
    rows = []
    for g in groups:
        first = g["mean_first_epoch_at_target"]
        rows.append(
            [
                g["label"],
                str(g["step"]) if by != "step" else "",
                f"{g['n']} ({g['n_collapsed']} collapsed)" if g.get("n_collapsed") else str(g["n"]),
                f"{g['params']:,}" if isinstance(g["params"], int) else str(g["params"]),
                f"{g['mean']:.3f}",
                f"{g['std']:.3f}" if g["std"] is not None else "n/a",
                f"{g['sem']:.3f}" if g["sem"] is not None else "n/a",
                fmt_ci(g),
                f"{g['min']:.2f}",
                f"{g['max']:.2f}",
                f"{g['n_at_target']}/{g['n']}" if g["n_at_target"] is not None else "-",
                f"{first:.1f}" if first is not None else "-",
            ]
        )
    return rows


HEADER = ["group", "step", "n", "params", "mean", "std", "sem", "95% CI", "min", "max"]
HEADER += [f">={TARGET_ACC}", "first epoch at target"]


def render_table(
    name: str,
    groups: list[dict],
    missing: list[dict],
    by: str,
    metric: str = DEFAULT_METRIC,
    ref: dict | None = None,
    comparisons: list[dict] | None = None,
) -> str:
    header = list(HEADER)
    rows = table_rows(groups, by)
    if metric != DEFAULT_METRIC:  # the epoch is a test-set fact, whatever the headline
        header[-1] = "first epoch at target (test)"
    if ref:  # the other study's figure beside our mean
        at = header.index("mean") + 1
        header.insert(at, f"{ref['label']} test")
        for row, g in zip(rows, groups, strict=True):
            row.insert(at, reference.cell(g, "test_acc", ref))
    keep = [i for i in range(len(header)) if not (header[i] == "step" and by == "step")]
    header, rows = [header[i] for i in keep], [[r[i] for i in keep] for r in rows]
    header[0] = by
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    out = [f"{name}: {metric_label(metric)} over seeds, by {by}", line(header)]
    out += [line(r) for r in rows]
    if any(g["best_epoch_test_acc"] for g in groups):  # none when no run scored the test set
        out.append(f"best-epoch test accuracy ({BEST_LABEL}):")
        out += [f"  {g['label']}: {fmt_mean_std(g['best_epoch_test_acc'])}" for g in groups]
    out += [f"  {line}" for line in weights_lines(groups)]
    if any(g["ci95"] is None for g in groups):
        out.append("n/a: a group with one seed has no variance, std, sem or CI")
    out += collapsed_lines(groups)
    out += bounded_lines(groups)
    if ref:
        out.append(f"{ref['label']}: {ref['description'] or ref['name']} ({ref['file']})")
    if comparisons is not None:
        out += compare.render_text(comparisons, metric_label(metric))
    out += missing_lines(missing)
    return "\n".join(out)


def collapsed_lines(groups: list[dict]) -> list[str]:
    """ "k of n collapsed" per group that has any: those seeds are in the statistics."""
    hit = [g for g in groups if g.get("n_collapsed")]
    if not hit:
        return []
    head = f"collapsed: final accuracy below {hit[0]['collapsed_below']:g}%, counted in n:"
    return [head] + [f"  {g['label']}: {g['n_collapsed']} of {g['n']} collapsed" for g in hit]


def weights_lines(groups: list[dict]) -> list[str]:
    """With an EMA, both sets of weights' final accuracy, the headline named."""
    lines = []
    for g in groups:
        w = g.get("weights")
        if w:
            lines.append(
                f"{g['label']}: final {w['split']} accuracy, model weights "
                f"{fmt_mean_std(w['model'])}, EMA weights {fmt_mean_std(w['ema'])} "
                f"(headline: {w['headline']})"
            )
    return ["plain and EMA weights:"] + lines if lines else []


def missing_lines(missing: list[dict]) -> list[str]:
    if not missing:
        return ["missing or failed trials: none"]
    lines = [f"missing or failed trials: {len(missing)}"]
    return lines + [f"  {m['trial_id']}: {why(m)} ({m['path']})" for m in missing]


def why(m: dict) -> str:
    """'failed: <error>', or the bare state where there is no more to say ('pending')."""
    return m["status"] if m["reason"] == m["status"] else f"{m['status']}: {m['reason']}"


def render_markdown(
    name: str,
    groups: list[dict],
    missing: list[dict],
    by: str,
    metric: str = DEFAULT_METRIC,
    ref: dict | None = None,
    comparisons: list[dict] | None = None,
) -> str:
    """The origin study's table (step, params, train accuracy, test accuracy), mean ± std (n);
    with ``ref``, the other study's figures in columns headed by what they are."""
    lead = [] if by == "step" else [by]
    headline = "test accuracy (%)" if metric == DEFAULT_METRIC else metric_label(metric)
    head = lead + ["step", "params", "train accuracy (%)", headline]
    if ref:
        head += [f"{ref['label']} {k}" for k in ("params", "train (%)", "test (%)")]
    head += ["95% CI", f"≥ {TARGET_ACC}%"]
    head += ["first epoch at target" + (" (test)" if metric != DEFAULT_METRIC else "")]
    out = [f"## {name}: seed statistics", ""]
    what = "Final-epoch accuracy"
    if metric != DEFAULT_METRIC:
        what = f"Train accuracy and {metric_label(metric)} (`--metric {metric}`)"
    intro = (
        f"{what}, mean ± std (n seeds); std is the sample std (ddof=1), the CI is Student t "
        "on the mean. Train accuracy is the last epoch's running accuracy on the augmented "
        "training set."
    )
    if ref:
        about = ref["description"] or ref["name"]
        intro += f" {ref['label']}: {about} (`{ref['file']}`), not seed statistics."
    out.append(intro)
    out += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        first = g["mean_first_epoch_at_target"]
        params = f"{g['params']:,}" if isinstance(g["params"], int) else str(g["params"])
        cells = [g["label"]] if lead else []
        cells += [
            g["label"] if not lead else str(g["step"]),
            params,
            fmt_mean_std(g["train_acc"]),
            fmt_mean_std(g),
        ]
        if ref:
            cells += [reference.cell(g, k, ref) for k in ("params", "train_acc", "test_acc")]
        at = f"{g['n_at_target']}/{g['n']}" if g["n_at_target"] is not None else "—"
        cells += [fmt_ci(g), at, f"{first:.1f}" if first else "—"]
        out.append("| " + " | ".join(cells) + " |")
    if any(g["best_epoch_test_acc"] for g in groups):  # none when no run scored the test set
        out += ["", f"Best-epoch test accuracy ({BEST_LABEL}):", ""]
        out += [f"- {g['label']}: {fmt_mean_std(g['best_epoch_test_acc'])}" for g in groups]
    out += [""] + [f"- {line}" for line in weights_lines(groups)] if weights_lines(groups) else []
    bounded = bounded_lines(groups)
    out += ["", bounded[0], ""] + [f"- {ln.strip()}" for ln in bounded[1:]] if bounded else []
    if comparisons is not None:
        out += [""] + compare.render_markdown(comparisons, metric_label(metric))
    out += [""] + [ln.replace("  ", "- ", 1) for ln in missing_lines(missing)]
    return "\n".join(out) + "\n"


def emit(text: str) -> None:
    """Print to stdout; a reader that stops early (``| head``) is no error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Python's recipe: point stdout at devnull so the exit-time flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("dir", nargs="?", help="sweep folder (sweep.json and <trial>/result.json), or any runs")
    add("--json", action="store_true", help='print {"groups": [...], "missing": [...]}')
    add("--markdown", metavar="FILE", help="write the Markdown table here")
    add("--plots", metavar="DIR", help="write the PNG plots into this folder")
    add("--by", default="step", metavar="KEY", help="TrainConfig key to group by (default step)")
    add("--metric", default=DEFAULT_METRIC, metavar="KEY", help="result.json number to aggregate")
    add("--split", metavar="KEY", help="also split rows by this result.json field (cpu_model)")
    add(
        "--compare",
        nargs="?",
        const="",
        action="append",
        metavar="A:B",
        help="Welch's t-test of each pair of rows, or of rows A:B (by label; repeatable, "
        "comma-separated); after DIR",
    )
    add(
        "--paired",
        metavar="OTHER",
        help="per-trial differences against OTHER's runs of the same trials",
    )
    add(
        "--margin",
        type=float,
        metavar="POINTS",
        help="with --paired: is the 95%% CI within ±POINTS?",
    )
    add("--reference", metavar="FILE", help="another study's figures beside ours (TOML)")
    add("--wandb", metavar="ENTITY/PROJECT", help="read the runs from W&B instead of DIR")
    add("--group", help="W&B group to read (with --wandb) or to log into (default: sweep name)")
    add("--top", type=int, default=10, metavar="K", help="tune folders: the K best trials")
    add("--log-to-wandb", action="store_true", help="log a summary run (table, plots) to W&B")
    add("--wandb-project", default="mnist-dist", help="[ENTITY/]PROJECT for DIR --log-to-wandb")
    return p


@cli_errors
def report_main(argv: list[str] | None = None, prog: str = "mnist-dist report") -> None:
    """mnist-dist report DIR [--json] [--markdown FILE] [--plots DIR] [--by KEY]"""
    args = build_parser(prog).parse_args(argv)
    if args.dir and (Path(args.dir) / "tune.json").is_file():  # a search's folder
        from ..tune.report import report_tune

        if args.top < 1:
            raise UserError(f"--top must be at least 1, got {args.top}")
        given = [f for f, v in (("--compare", args.compare), ("--paired", args.paired),
                                ("--reference", args.reference), ("--split", args.split),
                                ("--log-to-wandb", args.log_to_wandb)) if v]  # fmt: skip
        if given:
            raise UserError(f"{given[0]} reads a sweep's runs; a tune folder's report takes "
                            "--top, --json, --markdown and --plots")  # fmt: skip
        return report_tune(Path(args.dir), args)
    keys = [f.name for f in dataclasses.fields(TrainConfig)]
    if args.by not in keys:
        raise UserError(f"unknown --by key {args.by!r}; valid keys: {', '.join(keys)}")
    if args.dir is None and any(Path(s).is_dir() for s in args.compare or []):
        raise UserError("--compare took the folder for its pairs: put DIR first (DIR --compare)")
    if (args.dir is None) == (args.wandb is None):
        raise UserError("give a sweep folder DIR or --wandb ENTITY/PROJECT --group G (one of them)")
    if args.paired is not None and args.dir is None:
        raise UserError("--paired OTHER compares two folders of runs: give DIR first")
    if args.margin is not None and (args.paired is None or args.margin <= 0):
        raise UserError("--margin POINTS needs --paired OTHER and a positive number of points")
    ref = reference.load_reference(args.reference) if args.reference else None
    corrupt: list[dict] = []
    if args.wandb:
        from .wandb import load_runs

        if not args.group:
            raise UserError("--wandb needs --group G (the sweep's W&B group)")
        name, (results, missing) = args.group, load_runs(args.wandb, args.group)
    else:
        name, results, missing, corrupt = load_dir(Path(args.dir))
    if not results:
        where = args.dir or f"{args.wandb} group {args.group}"
        raise UserError(f"{where}: no finished trials ({len(missing)} missing or failed)")
    results, lacking = split_by_metric(results, args.metric)
    missing = missing + lacking
    if args.split and not any(args.split in r for r in results):
        raise UserError(f"--split {args.split}: no result.json records it (try cpu_model)")
    found, warnings = config_groups(results, args.by, args.split)
    groups = [one_group(args.by, g, args.metric) for g in found]
    comparisons = None
    if args.compare is not None:
        comparisons = compare.compare_groups(groups, args.compare)
    if ref:
        warnings += reference.match(groups, ref)
    pair = None
    if args.paired is not None:
        pair = paired_with(args, results)
    for line in warnings:
        print(f"mnist-dist: warning: {line}", file=sys.stderr)
    shown = (groups, missing, args.by, args.metric, ref, comparisons)
    if args.json:
        out = dict(name=name, by=args.by, metric=args.metric, groups=groups, missing=missing)
        out.update({} if ref is None else dict(reference=ref))
        out.update({} if comparisons is None else dict(comparisons=comparisons))
        out.update({} if pair is None else dict(paired=pair))
        emit(dumps(out))
    else:
        lines = [] if pair is None else compare.render_paired(pair, metric_label(args.metric))
        emit("\n".join([render_table(name, *shown), *lines]))
    markdown = render_markdown(name, *shown)
    if pair is not None:
        markdown += (
            "\n" + "\n".join(compare.render_paired(pair, metric_label(args.metric), True)) + "\n"
        )
    plots: list[Path] = []
    try:
        if args.markdown:
            write_text(Path(args.markdown), markdown)
        if args.plots:
            from .plots import write_plots

            plots = write_plots(found, Path(args.plots), args.metric)
    except OSError as e:  # unwritable or full: name the path, no traceback
        raise UserError(f"could not write {e.filename or 'output'}: {e.strerror or e}") from e
    if args.log_to_wandb:
        from .wandb import log_report

        project = args.wandb or args.wandb_project
        rows = [HEADER, *table_rows(groups, args.by)]
        log_report(project, args.group or name, groups, rows, markdown, plots, found, args)
    if corrupt:
        bad = ", ".join(f"{c['path']} ({c['reason']})" for c in corrupt)
        raise UserError(f"skipped {len(corrupt)} corrupted result.json: {bad}; reported the rest")


def paired_with(args: argparse.Namespace, results: list[dict]) -> dict:
    """``--paired OTHER``: this folder's runs against OTHER's runs of the same trial ids."""
    other = Path(args.paired)
    if not other.is_dir():
        raise UserError(f"--paired {other}: no such folder; give a folder of runs (a sweep --out)")
    _, theirs, _, _ = load_dir(other)
    theirs, _ = split_by_metric(theirs, args.metric)
    return compare.paired(args.dir, results, str(other), theirs, args.metric, args.margin)


main = report_main
