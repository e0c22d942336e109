"""``mnist-dist report DIR`` on a tune folder: what the search found, on validation only.

Four views, each as text (stdout), Markdown (``--markdown``), JSON (``--json``) and PNG
(``--plots``): the top ``--top`` trials with their mean +- std over seeds; the parameter
importances (Optuna's fANOVA over the complete trials within the budget); the optimisation
history (each trial's mean validation accuracy, and the best so far); and the fronts of
validation accuracy against parameters and against training seconds (the trials no other
beats on both). No figure here is a test figure: a tune never scores the test set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError
from ..fsio import dumps, write_text
from . import study as st
from .command import status_line
from .spec import load_tune


def tune_summary(out: Path, top: int) -> dict[str, Any]:
    spec = load_tune(out / st.SPEC)
    study, _ = st.load_study(out, spec, st.read_record(out))
    ranked = st.best_trials(study)
    if not ranked:
        raise UserError(f"{out}: no complete trial yet (see `mnist-dist tune {out} --status`)")
    rows = [st.trial_row(t) for t in ranked]
    by_number = sorted(rows, key=lambda r: r["number"])
    best, history = -1.0, []
    for r in by_number:
        best = max(best, r["value"])
        history.append(dict(number=r["number"], value=r["value"], best=best))
    return dict(
        name=spec.name, folder=str(out), status=status_line(out), objective=(
            f"mean final-epoch validation accuracy (%) over seeds {spec.seeds}, "
            f"{spec.fixed.get('val_split')} validation images"),
        max_params=spec.max_params, top=rows[:top], importances=importances(ranked),
        history=history, front_params=front(rows, "params"), front_seconds=front(rows, "seconds"),
        points=[dict(number=r["number"], value=r["value"], params=r["params"],
                     seconds=r["seconds"]) for r in by_number],
    )  # fmt: skip


def importances(trials: list) -> dict[str, float] | str:
    """fANOVA importance of each searched parameter, over ``trials`` (complete, within the
    budget: an over-budget trial's 0 would teach it the budget, not the accuracy)."""
    import optuna

    varied = [k for k in trials[0].params if len({repr(t.params.get(k)) for t in trials}) > 1]
    if len(trials) < 2 or not varied:
        return "needs two complete trials that differ"
    study = optuna.create_study(direction="maximize")
    study.add_trials(trials)
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    found = optuna.importance.get_param_importances(study, evaluator=evaluator, params=varied)
    return {k: float(v) for k, v in found.items()}


def front(rows: list[dict[str, Any]], cost: str) -> list[dict[str, Any]]:
    """The trials no other beats on both accuracy (higher) and ``cost`` (lower), cheapest
    first."""
    known = sorted((r for r in rows if r.get(cost) is not None),
                   key=lambda r: (r[cost], -r["value"]))  # fmt: skip
    out, best = [], float("-inf")
    for r in known:
        if r["value"] > best:
            out.append(dict(number=r["number"], value=r["value"], **{cost: r[cost]}))
            best = r["value"]
    return out


def render(s: dict[str, Any], markdown: bool = False) -> str:
    lines = [f"{'# ' if markdown else ''}tune {s['name']} ({s['folder']})", "", s["status"],
             f"objective: {s['objective']}; budget {s['max_params']:,} params", ""]  # fmt: skip
    head = ["rank", "trial", "mean %", "std", "n", "params", "seconds", "config"]
    body = [
        [str(i), str(r["number"]), f"{r['value']:.3f}",
         f"{r['std']:.3f}" if r["std"] is not None else "-", str(len(r["val_accs"])),
         f"{r['params']:,}", f"{r['seconds']:.0f}" if r["seconds"] else "-",
         ", ".join(f"{k}={fmt(v)}" for k, v in r["config"].items())
         + (" (reused)" if r["reused"] else "")]
        for i, r in enumerate(s["top"], 1)
    ]  # fmt: skip
    lines += table(head, body, markdown) + [""]
    imp = s["importances"]
    lines.append(f"{'## ' if markdown else ''}parameter importances (fANOVA)")
    if isinstance(imp, str):
        lines.append(f"none: {imp}")
    else:
        lines += table(["parameter", "importance"],
                       [[k, f"{v:.3f}"] for k, v in imp.items()], markdown)  # fmt: skip
    for cost in ("params", "seconds"):
        lines += ["", f"{'## ' if markdown else ''}front: validation accuracy against {cost}"]
        lines += table(["trial", "mean %", cost],
                       [[str(r["number"]), f"{r['value']:.3f}", fmt(r[cost])]
                        for r in s[f"front_{cost}"]], markdown)  # fmt: skip
    return "\n".join(lines) + "\n"


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)


def table(head: list[str], body: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
            "| " + " | ".join(row) + " |" for row in body
        ]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [head, *body]]  # fmt: skip


def write_plots(s: dict[str, Any], folder: Path) -> list[Path]:
    from ..report.plots import _pyplot, _save

    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    h = s["history"]
    ax.scatter([r["number"] for r in h], [r["value"] for r in h], s=14, label="trial")
    ax.step([r["number"] for r in h], [r["best"] for r in h], where="post", color="C3",
            label="best so far")  # fmt: skip
    ax.set(xlabel="trial", ylabel="mean validation accuracy (%)",
           title=f"{s['name']}: optimisation history (complete trials within budget)")  # fmt: skip
    ax.legend(loc="lower right", fontsize=8)
    paths.append(folder / "history.png")
    _save(fig, paths[-1])
    plt.close(fig)

    if not isinstance(s["importances"], str):
        imp = s["importances"]
        fig, ax = plt.subplots(figsize=(7, 0.5 + 0.4 * len(imp)))
        ax.barh(list(imp)[::-1], list(imp.values())[::-1], color="C0")
        ax.set(xlabel="importance (fANOVA; sums to 1)", title=f"{s['name']}: what mattered")
        paths.append(folder / "importances.png")
        _save(fig, paths[-1])
        plt.close(fig)

    for cost, label in (("params", "parameters"), ("seconds", "training seconds")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        pts = [r for r in s["points"] if r.get(cost) is not None]
        ax.scatter([r[cost] for r in pts], [r["value"] for r in pts], s=14, alpha=0.6,
                   label="trial")  # fmt: skip
        f = s[f"front_{cost}"]
        ax.step([r[cost] for r in f], [r["value"] for r in f], where="post", color="C3",
                marker="o", ms=4, label="front")  # fmt: skip
        if cost == "params":
            ax.axvline(s["max_params"], color="0.5", ls="--", lw=1, label="budget")
        ax.set(xlabel=label, ylabel="mean validation accuracy (%)",
               title=f"{s['name']}: validation accuracy against {label}")  # fmt: skip
        ax.legend(loc="lower right", fontsize=8)
        paths.append(folder / f"front_{cost}.png")
        _save(fig, paths[-1])
        plt.close(fig)
    return paths


def report_tune(out: Path, args) -> None:
    """``mnist-dist report DIR`` where DIR is a tune folder."""
    s = tune_summary(out, args.top)
    if args.json:
        print(dumps(s))
    else:
        print(render(s), end="")
    try:
        if args.markdown:
            write_text(Path(args.markdown), render(s, markdown=True))
        if args.plots:
            write_plots(s, Path(args.plots))
    except OSError as e:
        raise UserError(f"could not write {e.filename or 'output'}: {e.strerror or e}") from e
