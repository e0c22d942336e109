"""PNG plots of a sweep report (matplotlib, Agg backend: no display needed).

Used by ``mnist-dist report DIR --plots PLOTDIR``; no command of its own.

* ``test_acc_per_epoch.png``: test accuracy (%) per epoch for each group, the mean line,
  a +-1 std band across seeds and each seed as a faint line.
* ``final_acc_vs_params.png``: final-epoch test accuracy (%) against the parameter count,
  one point per step, error bars +-1 std across seeds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .config import TARGET_ACC
from .stats import group_key, group_stats

CURVES = "test_acc_per_epoch.png"
PARAMS = "final_acc_vs_params.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Atomic: a reader sees the old PNG or the new one."""
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)


def epoch_curves(runs: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean and std (ddof=1; 0 with one seed) of test accuracy over the seeds."""
    by_epoch: dict[int, list[float]] = {}
    for r in runs:
        for h in r.get("history") or []:
            by_epoch.setdefault(int(h["epoch"]), []).append(float(h["test_acc"]))
    epochs = np.array(sorted(by_epoch))
    mean = np.array([np.mean(by_epoch[e]) for e in epochs])
    std = np.array([np.std(by_epoch[e], ddof=1) if len(by_epoch[e]) > 1 else 0.0 for e in epochs])
    return epochs, mean, std


def plot_curves(results: list[dict[str, Any]], by: str, path: Path) -> Path:
    plt = _pyplot()
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(r["config"].get(by), []).append(r)
    fig, ax = plt.subplots(figsize=(8, 5))
    lows = []
    for i, value in enumerate(sorted(groups, key=group_key)):
        color = f"C{i % 10}"
        for r in groups[value]:
            hist = r.get("history") or []
            ax.plot(
                [h["epoch"] for h in hist],
                [h["test_acc"] for h in hist],
                color=color,
                alpha=0.25,
                linewidth=0.8,
            )
        epochs, mean, std = epoch_curves(groups[value])
        if len(epochs) == 0:
            continue
        label = f"{by}={value} (n={len(groups[value])})"
        ax.plot(epochs, mean, color=color, linewidth=2, label=label, marker="o", markersize=3)
        ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        lows.append(float(np.min(mean[len(mean) // 2 :] - std[len(std) // 2 :])))
    ax.axhline(TARGET_ACC, color="grey", linestyle="--", linewidth=1, label=f"target {TARGET_ACC}%")
    if lows:  # zoom on the second half of training, where the groups differ
        ax.set_ylim(max(0.0, min(lows) - 0.5), 100.0)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Test accuracy per epoch: mean, ±1 std band, each seed faint")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)
    plt.close(fig)
    return path


def plot_params(results: list[dict[str, Any]], path: Path) -> Path:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    xs = []
    for i, g in enumerate(group_stats(results, "step")):
        params = g["params"] if isinstance(g["params"], int) else float(np.mean(g["params"]))
        xs.append(params)
        ax.errorbar(
            params,
            g["mean"],
            yerr=g["std"] or 0.0,
            fmt="o",
            capsize=4,
            color=f"C{i % 10}",
            label=f"{g['step']} (n={g['n']})",
        )
        ax.annotate(g["step"], (params, g["mean"]), textcoords="offset points", xytext=(6, 6))
    ax.axhline(TARGET_ACC, color="grey", linestyle="--", linewidth=1, label=f"target {TARGET_ACC}%")
    ax.set_xscale("log")
    # Plain "7,074"-style labels; log-scale minor labels collide over a narrow range.
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(sorted({int(x) for x in xs}))
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("final-epoch test accuracy (%)")
    ax.set_title("Final test accuracy vs parameters, per step (error bars: ±1 std)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)
    return path


def write_plots(results: list[dict[str, Any]], by: str, folder: Path) -> list[Path]:
    """Both PNGs into ``folder`` (created); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    return [plot_curves(results, by, folder / CURVES), plot_params(results, folder / PARAMS)]
