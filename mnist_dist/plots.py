"""PNG plots of a sweep report (matplotlib, Agg backend: no display needed).

Used by ``mnist-dist report DIR --plots PLOTDIR``; no command of its own. Every plot has
one entry per config group (the report's rows: seeds of one config, never pooled):

* ``test_acc_per_epoch.png``: test accuracy (%) per epoch, the mean line, a +-1 std band
  across seeds and each seed as a faint line, with the 99.4% target.
* ``performance.png``: the origin study's four graphs in one figure (train loss, train
  accuracy, test loss, test accuracy per epoch), each with the same mean and seed band.
* ``final_acc_vs_params.png``: final-epoch test accuracy (%) (or the report's ``--metric``)
  against the parameter count, one point per group, error bars +-1 std across seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .config import TARGET_ACC
from .fsio import atomic_open
from .stats import DEFAULT_METRIC, Group, group_key, metric_label

CURVES = "test_acc_per_epoch.png"
PANELS = "performance.png"
PARAMS = "final_acc_vs_params.png"
# The origin's four graphs: (history key, title, unit)
PANEL_KEYS = (
    ("train_loss", "Training loss", "NLL loss"),
    ("train_acc", "Training accuracy", "accuracy (%)"),
    ("test_loss", "Test loss", "NLL loss"),
    ("test_acc", "Test accuracy", "accuracy (%)"),
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


def draw_metric(ax, groups: list[Group], key: str, legend: bool = True) -> list[float]:
    """Each group's seeds faint, their mean bold with a +-1 std band; returns the lows of
    each mean's second half (where groups differ), for zooming."""
    lows = []
    for i, g in enumerate(groups):
        color = f"C{i % 10}"
        for r in g.runs:
            hist = [h for h in r.get("history") or [] if h.get(key) is not None]
            xs, ys = [h["epoch"] for h in hist], [h[key] for h in hist]
            ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
        epochs, mean, std = epoch_curves(g.runs, key)
        if len(epochs) == 0:
            continue
        label = f"{g.label} (n={len(g.runs)})" if legend else None
        ax.plot(epochs, mean, color=color, linewidth=2, label=label, marker="o", markersize=3)
        ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        half = len(mean) // 2
        lows.append(float(np.min(mean[half:] - std[half:])))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    return lows


def plot_curves(groups: list[Group], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    lows = draw_metric(ax, groups, "test_acc")
    ax.axhline(TARGET_ACC, color="grey", linestyle="--", linewidth=1, label=f"target {TARGET_ACC}%")
    if lows:  # zoom on the second half of training, where the groups differ
        ax.set_ylim(max(0.0, min(lows) - 0.5), 100.0)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Test accuracy per epoch: mean, ±1 std band, each seed faint")
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)
    plt.close(fig)
    return path


def plot_panels(groups: list[Group], path: Path) -> Path:
    """The origin's four performance graphs, each group's seeds as a mean and band."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for ax, (key, title, unit) in zip(axes.flat, PANEL_KEYS, strict=True):
        draw_metric(ax, groups, key, legend=key == "test_acc")
        if key.endswith("loss"):
            ax.set_yscale("log")  # losses fall over orders of magnitude
        ax.set_title(title)
        ax.set_ylabel(unit)
    axes.flat[-1].legend(loc="lower right", fontsize=8)
    fig.suptitle("Per epoch: mean over seeds, ±1 std band, each seed faint")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_params(groups: list[Group], path: Path, metric: str = DEFAULT_METRIC) -> Path:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    xs = []
    for i, g in enumerate(groups):
        params = float(np.mean([r["params"] for r in g.runs]))
        finals = [float(r[metric]) for r in g.runs]
        std = float(np.std(finals, ddof=1)) if len(finals) > 1 else 0.0
        xs.append(params)
        label = f"{g.label} (n={len(finals)})"
        ax.errorbar(params, np.mean(finals), yerr=std, fmt="o", capsize=4, color=f"C{i % 10}",
                    label=label)  # fmt: skip
        ax.annotate(g.label, (params, np.mean(finals)), textcoords="offset points", xytext=(6, 6))
    ax.axhline(TARGET_ACC, color="grey", linestyle="--", linewidth=1, label=f"target {TARGET_ACC}%")
    ax.set_xscale("log")
    # Plain "7,074"-style labels; log-scale minor labels collide over a narrow range.
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(sorted({int(x) for x in xs}))
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel(metric_label(metric))
    what = "Final test accuracy" if metric == DEFAULT_METRIC else metric
    ax.set_title(f"{what} vs parameters, per config (error bars: ±1 std)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)
    return path


def write_plots(groups: list[Group], folder: Path, metric: str = DEFAULT_METRIC) -> list[Path]:
    """The three PNGs into ``folder`` (created); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    groups = sorted(groups, key=lambda g: (group_key(g.value), g.label))
    return [
        plot_curves(groups, folder / CURVES),
        plot_panels(groups, folder / PANELS),
        plot_params(groups, folder / PARAMS, metric),
    ]
