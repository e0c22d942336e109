"""PNG plots of a sweep report (matplotlib, Agg backend: no display needed).

Used by ``mnist-dist report DIR --plots PLOTDIR``; no command of its own. Every plot has
one entry per config group (the report's rows: seeds of one config, never pooled):

* ``test_acc_per_epoch.png``: test accuracy (%) per epoch, the mean line, a +-1 std band
  across seeds and each seed as a faint line, with the 99.4% target.
* ``performance.png``: the origin study's four graphs in one figure (train loss, train
  accuracy, test loss, test accuracy per epoch), each with the same mean and seed band.
* ``final_acc_vs_params.png``: final-epoch test accuracy (%) (or the report's ``--metric``)
  against the parameter count: one dot per seed, each group's mean with its 95% t-interval.

Collapsed seeds (``rundir.collapsed``: final accuracy below 20%, the rule status and the
report use) are counted (in the legend, and at the bottom edge of the params plot), never
drawn: a dead net at 10% would stretch the axis over the region where the configs differ.
The statistics drawn are over the seeds that trained; the report's table keeps all seeds.

Held-out curves follow the report's metric: with ``--metric final_val_acc`` (a tuning
sweep, which never scores the test set) they are the validation ones, in
``val_acc_per_epoch.png`` and the panels, instead of empty test axes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..config import TARGET_ACC
from ..fsio import atomic_open
from ..rundir import COLLAPSED_BELOW, collapsed
from .stats import (
    ACC_BOUNDS,
    BOUNDED,
    DEFAULT_METRIC,
    Group,
    group_key,
    is_accuracy,
    metric_label,
    shown_ci,
    summarize,
)

PANELS = "performance.png"
PARAMS = "final_acc_vs_params.png"
HELD_OUT = {"test": "Test", "val": "Validation"}  # history key prefix -> title word
ZOOM_POINTS = 1.0  # the zooms show the groups whose mean ends this close to the best (points)


def held_out(metric: str) -> str:
    """The held-out set whose per-epoch curves go with ``metric``: validation for a
    validation metric (its runs may never score the test set), else test."""
    return "val" if metric.startswith("final_val") else "test"


def curves_name(split: str) -> str:
    return f"{split}_acc_per_epoch.png"


def panel_keys(split: str) -> tuple[tuple[str, str, str], ...]:
    """The origin's four graphs: (history key, title, unit)."""
    return (
        ("train_loss", "Training loss", "NLL loss"),
        ("train_acc", "Training accuracy", "accuracy (%)"),
        (f"{split}_loss", f"{HELD_OUT[split]} loss", "NLL loss"),
        (f"{split}_acc", f"{HELD_OUT[split]} accuracy", "accuracy (%)"),
    )


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Atomic: a reader sees the old PNG or the new one."""
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")


def _legend(ax, loc: str = "lower right") -> None:
    """Inside the axes while it is small; beside them (the saved PNG widens to fit) when
    many or long labels (a sweep's configs) would cover the curves."""
    labels = ax.get_legend_handles_labels()[1]
    if len(labels) <= 5 and max(map(len, labels), default=0) <= 40:
        ax.legend(loc=loc, fontsize=8)
    else:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, borderaxespad=0)


def epoch_curves(
    runs: list[dict[str, Any]], key: str = "test_acc"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean and std (ddof=1; 0 with one seed) of ``key`` over the seeds."""
    by_epoch: dict[int, list[float]] = {}
    for r in runs:
        for h in r.get("history") or []:
            if h.get(key) is not None:
                by_epoch.setdefault(int(h["epoch"]), []).append(float(h[key]))
    epochs = np.array(sorted(by_epoch))
    mean = np.array([np.mean(by_epoch[e]) for e in epochs])
    std = np.array([np.std(by_epoch[e], ddof=1) if len(by_epoch[e]) > 1 else 0.0 for e in epochs])
    return epochs, mean, std


def trained(g: Group, metric: str = DEFAULT_METRIC) -> tuple[list[dict[str, Any]], int]:
    """(the group's runs that trained, how many collapsed): the shared rule, rundir.collapsed;
    a run without the metric counts as trained."""
    if not is_accuracy(metric):  # 20 s or a loss of 20 is no dead net
        return list(g.runs), 0
    runs = [r for r in g.runs if not collapsed(r.get(metric))]
    return runs, len(g.runs) - len(runs)


def draw_metric(
    ax,
    groups: list[Group],
    key: str,
    legend: bool = True,
    metric: str = DEFAULT_METRIC,
    bands: list[bool] | None = None,
) -> dict[int, float]:
    """Each group's seeds faint, their mean bold with a +-1 std band (where ``bands`` says:
    a zoom leaves out the wide bands of groups far below it), over the seeds that trained
    (collapsed ones are counted in the legend, not drawn: a dead net at 10% would set the
    axis); returns {group index: the low of its mean's second half}, for zooming."""
    lows = {}
    for i, g in enumerate(groups):
        color = f"C{i % 10}"
        runs, dead = trained(g, metric)
        for r in runs:
            hist = [h for h in r.get("history") or [] if h.get(key) is not None]
            xs, ys = [h["epoch"] for h in hist], [h[key] for h in hist]
            ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
        epochs, mean, std = epoch_curves(runs, key)
        if len(epochs) == 0:
            continue
        gone = f", {dead} collapsed, not drawn" if dead else ""
        label = f"{g.label} (n={len(g.runs)}{gone})" if legend else None
        style = ("-", "--", ":")[i // 10 % 3]  # colours repeat after 10 groups: styles do not
        ax.plot(epochs, mean, color=color, linewidth=2, label=label, marker="o", markersize=3,
                linestyle=style)  # fmt: skip
        if bands is None or bands[i]:
            ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        half = len(mean) // 2
        lows[i] = float(np.min(mean[half:] - std[half:]))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    return lows


def zoom_on(ax, lows: dict[int, float], near: list[bool]) -> None:
    """An accuracy axis from just below the second half of the groups near the best
    (``contenders``) to 100: where they differ. Groups far below run off its bottom."""
    mine = [low for i, low in lows.items() if near[i]]
    if mine:
        ax.set_ylim(max(0.0, min(mine) - 0.5), 100.0)
        if not all(near[i] for i in lows):
            note = f"zoom: the configs within {ZOOM_POINTS:g} point of the best; others run below"
            ax.text(0.01, 0.99, note, transform=ax.transAxes, fontsize=7, color="grey", va="top")


def plot_curves(
    groups: list[Group], path: Path, split: str = "test", metric: str = DEFAULT_METRIC
) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    near = contenders(groups, metric)
    lows = draw_metric(ax, groups, f"{split}_acc", metric=metric, bands=near)
    ax.axhline(TARGET_ACC, color="grey", linestyle="--", linewidth=1, label=f"target {TARGET_ACC}%")
    zoom_on(ax, lows, contenders(groups, metric))
    ax.set_ylabel(f"{HELD_OUT[split].lower()} accuracy (%)")
    ax.set_title(f"{HELD_OUT[split]} accuracy per epoch: mean, ±1 std band, each seed faint")
    _legend(ax)
    _save(fig, path)
    plt.close(fig)
    return path


def plot_panels(
    groups: list[Group], path: Path, split: str = "test", metric: str = DEFAULT_METRIC
) -> Path:
    """The origin's four performance graphs, each group's seeds as a mean and band."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    near = contenders(groups, metric)
    for ax, (key, title, unit) in zip(axes.flat, panel_keys(split), strict=True):
        acc = not key.endswith("loss")
        lows = draw_metric(ax, groups, key, legend=key == f"{split}_acc", metric=metric,
                           bands=near if acc else None)  # fmt: skip
        if key.endswith("loss"):
            ax.set_yscale("log")  # losses fall over orders of magnitude
        else:
            zoom_on(ax, lows, near)
        ax.set_title(title)
        ax.set_ylabel(unit)
    fig.suptitle("Per epoch: mean over seeds, ±1 std band, each seed faint")
    fig.tight_layout()
    handles, labels = axes.flat[-1].get_legend_handles_labels()
    if len(labels) <= 5 and max(map(len, labels), default=0) <= 40:
        axes.flat[-1].legend(loc="lower right", fontsize=8)
    else:  # a sweep's many configs: under the four panels, not squeezing them
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=7)
    _save(fig, path)
    plt.close(fig)
    return path


def contenders(groups: list[Group], metric: str = DEFAULT_METRIC) -> list[bool]:
    """Per group: whether its trained seeds' mean ends within ZOOM_POINTS of the best
    group's, i.e. where the configs differ and the zooms look. All, for non-accuracies."""
    means = [np.mean([float(r[metric]) for r in runs]) if runs else None
             for runs, _ in (trained(g, metric) for g in groups)]  # fmt: skip
    known = [m for m in means if m is not None]
    if not is_accuracy(metric) or not known:
        return [True] * len(groups)
    return [m is not None and m >= max(known) - ZOOM_POINTS for m in means]


def plot_params(groups: list[Group], path: Path, metric: str = DEFAULT_METRIC) -> Path:
    """One dot per seed, each group's mean and CI; beside it, when some groups end far
    below the best, the same zoomed on the groups within ZOOM_POINTS of it."""
    plt = _pyplot()
    near = contenders(groups, metric)
    zoom = not all(near)
    fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(13 if zoom else 7, 5), squeeze=False)
    draw_params(axes[0][0], groups, metric, [True] * len(groups))
    what = "Final test accuracy" if metric == DEFAULT_METRIC else metric
    axes[0][0].set_title(f"{what} vs parameters: each seed, mean and 95% CI of the seeds that "
                         f"trained\n(collapsed: below {COLLAPSED_BELOW:g}%, counted at the bottom "
                         "edge)", fontsize=10)  # fmt: skip
    if zoom:
        draw_params(axes[0][1], groups, metric, near)
        axes[0][1].set_title(f"zoom: the configs within {ZOOM_POINTS:g} point of the best mean",
                             fontsize=10)  # fmt: skip
    _save(fig, path)
    plt.close(fig)
    return path


def draw_params(ax, groups: list[Group], metric: str, keep: list[bool]) -> None:
    """The groups marked in ``keep``: seeds jittered side by side, the mean with its CI (the
    bounded one where the t-interval leaves [0, 100]), collapsed seeds counted at the
    bottom edge; the seeds that trained set the axis."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    xs, shown = [], []
    for i, g in enumerate(groups):
        if not keep[i]:
            continue
        params = float(np.mean([r["params"] for r in g.runs]))
        runs, dead = trained(g, metric)
        finals = [float(r[metric]) for r in runs]
        xs.append(params)
        color, marker = f"C{i % 10}", "osD"[i // 10 % 3]
        if dead:  # counted at the axis' bottom edge, never setting the axis
            ax.annotate(f"▼ {dead} collapsed", (params, 0), xycoords=("data", "axes fraction"),
                        ha="center", va="bottom", color=color, fontsize=8)  # fmt: skip
        if not finals:
            continue
        stats = summarize(finals, ACC_BOUNDS if is_accuracy(metric) else None)
        ci = shown_ci(stats) or [stats["mean"]] * 2
        shown += [*finals, *ci]
        jitter = params * (1 + 0.01 * np.linspace(-1, 1, len(finals)))  # seeds side by side
        ax.scatter(jitter, finals, s=12, color=color, alpha=0.5, marker=marker, linewidths=0)
        gone = f", {dead} collapsed" if dead else ""
        gone += f", {BOUNDED} CI" if stats.get("ci95_bounded") else ""  # t leaves [0, 100]
        ax.errorbar(params, stats["mean"], yerr=[[stats["mean"] - ci[0]], [ci[1] - stats["mean"]]],
                    fmt=marker, capsize=4, color=color, markersize=7,
                    label=f"{g.label} (n={len(g.runs)}{gone})")  # fmt: skip
        if sum(keep) <= 5:  # more would pile up: the legend names them
            ax.annotate(
                g.label,
                (params, stats["mean"]),
                textcoords="offset points",
                xytext=(8, 10 if len(xs) % 2 else -14),
            )  # fmt: skip  (alternate: no overlap)
    if shown:  # the seeds that trained set the axis, with the target when it is near
        low, high = min(shown), max(shown)
        if is_accuracy(metric) and TARGET_ACC - 1 < high:
            low, high = min(low, TARGET_ACC), max(high, TARGET_ACC)
        pad = max(0.05, 0.08 * (high - low))
        ax.set_ylim(low - pad, high + pad)
    ax.axhline(TARGET_ACC, color="grey", linestyle="--", linewidth=1, label=f"target {TARGET_ACC}%")
    ax.set_xscale("log")
    # Plain "7,074"-style labels; log-scale minor labels collide over a narrow range.
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ticks: list[int] = []
    span = max(max(xs) / min(xs), 1.5) if xs else 1.5  # labels closer than ~1/12 collide
    for x in sorted({int(x) for x in xs}):  # one label per cluster: 6,270 and 7,074 overlap
        if not ticks or x > ticks[-1] * span ** (1 / 12):
            ticks.append(x)
    ax.set_xticks(ticks)
    if xs and max(xs) / min(xs) < 1.5:  # a narrow range: room for the labels and the jitter
        ax.set_xlim(min(xs) / 1.15, max(xs) * 1.15)
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel(metric_label(metric))
    ax.grid(alpha=0.3, which="both")
    _legend(ax, loc="best")


def write_plots(groups: list[Group], folder: Path, metric: str = DEFAULT_METRIC) -> list[Path]:
    """The three PNGs into ``folder`` (created); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    groups = sorted(groups, key=lambda g: (group_key(g.value), g.label))
    split = held_out(metric)
    return [
        plot_curves(groups, folder / curves_name(split), split, metric),
        plot_panels(groups, folder / PANELS, split, metric),
        plot_params(groups, folder / PARAMS, metric),
    ]
