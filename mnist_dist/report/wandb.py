"""The report's W&B side: read a group's runs through ``wandb.Api``, log a summary run.

    mnist-dist report --wandb ENTITY/PROJECT --group smoke
    mnist-dist report --wandb ENTITY/PROJECT --group smoke --log-to-wandb --plots plots/
    mnist-dist report runs/sweeps/smoke --log-to-wandb --wandb-project ENTITY/PROJECT

Each trainer run carries its resolved config (``step``, ``seed``...), per-epoch metrics and
a summary with ``final_test_acc``, ``best_test_acc``, ``params`` and
``first_epoch_at_target`` (see ``mnist_dist.training.tracking``); they become result dicts like
``result.json``, so the statistics are the same code as for a sweep folder.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..training.tracking import INIT_TIMEOUT_S, has_credentials

REPORT_JOB_TYPE = "report"  # our own summary runs; never counted as trials
HISTORY_KEYS = ["epoch", "train_acc", "test_acc"]
API_TIMEOUT_S = 30  # per HTTP request


def split_path(path: str) -> tuple[str | None, str]:
    """``ENTITY/PROJECT`` or ``PROJECT`` -> (entity or None, project)."""
    parts = path.strip("/").split("/")
    if len(parts) > 2 or not all(parts):
        raise UserError(f"--wandb expects ENTITY/PROJECT, got {path!r}")
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def run_to_result(run) -> dict[str, Any]:
    """A W&B run as a result.json-like dict; ValueError when it lacks the final numbers.

    The run config is the resolved TrainConfig plus ``trial_id`` and ``config_hash``: the
    id de-duplicates (a trial logged twice counts once, the newest run), the config groups.
    """
    config, summary = dict(run.config), dict(run.summary_metrics)
    trial_id = config.pop("trial_id", None)
    config.pop("config_hash", None)
    if "step" not in config or "final_test_acc" not in summary:
        raise ValueError("no step in config or no final_test_acc in summary")
    history = [
        {k: row[k] for k in HISTORY_KEYS}
        for row in run.scan_history(keys=HISTORY_KEYS)
        if all(row.get(k) is not None for k in HISTORY_KEYS)
    ]
    history.sort(key=lambda h: h["epoch"])
    return dict(
        step=config["step"],
        seed=config.get("seed"),
        params=int(summary["params"]),
        epochs=config.get("epochs"),
        history=history,
        final_test_acc=float(summary["final_test_acc"]),
        best_test_acc=summary.get("best_test_acc"),
        best_epoch=summary.get("best_epoch"),
        first_epoch_at_target=summary.get("first_epoch_at_target"),
        trial_id=trial_id or f"{run.name} ({run.id})",
        config=config,
        world_size=summary.get("world_size"),
        _source=f"W&B run {run.id}",
        _time=_timestamp(getattr(run, "created_at", None)),
    )


def _timestamp(created_at: Any) -> float:
    """W&B's ISO creation time as seconds, for "newest run wins"; 0 when absent."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(created_at).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def group_filter(group: str) -> dict[str, Any]:
    """The sweep's group and its config groups: ``smoke`` and ``smoke/step4 ...``."""
    return {"$or": [{"group": group}, {"group": {"$regex": f"^{re.escape(group)}/"}}]}


def load_runs(path: str, group: str) -> tuple[list[dict], list[dict]]:
    """(results, missing) of the group's trainer runs; unfinished runs are named in missing."""
    entity, project = split_path(path)
    if not has_credentials():  # wandb.Api would prompt for a key on a terminal
        raise UserError("no W&B API key: run `wandb login` or set WANDB_API_KEY")
    import wandb

    try:
        api = wandb.Api(timeout=API_TIMEOUT_S)
        runs = list(api.runs(f"{entity}/{project}" if entity else project, group_filter(group)))
    except Exception as e:  # network, auth, unknown project: one line, no traceback
        msg = " ".join(str(e).split())
        raise UserError(f"could not read W&B runs of {path} group {group!r}: {msg}") from e
    results, missing = [], []
    for run in runs:
        if run.job_type == REPORT_JOB_TYPE:
            continue
        entry = dict(trial_id=f"{run.name} ({run.id})", path=f"{path}/{run.id}")
        if run.state != "finished":
            missing.append(dict(entry, status=run.state, reason=f"W&B run state {run.state}"))
            continue
        try:
            results.append(run_to_result(run))
        except (ValueError, TypeError, KeyError) as e:
            missing.append(dict(entry, status="incomplete", reason=str(e)))
    return results, missing


def log_report(project_path, group, groups, rows, markdown, plots, found, args) -> None:
    """A summary run in ``group``: the table, the Markdown and the plots. Failure is an error.

    The mode follows W&B's own ``WANDB_MODE`` (online unless set); offline runs land in
    the sweep folder (or the current one) and sync later with ``wandb sync``.
    """
    entity, project = split_path(project_path)
    import wandb

    if os.environ.get("WANDB_MODE", "online") == "online" and not has_credentials():
        raise UserError("--log-to-wandb: no W&B API key: run `wandb login` or set WANDB_API_KEY")
    where = Path(args.dir) if args.dir else Path.cwd()
    with tempfile.TemporaryDirectory() as tmp:
        if not plots:  # the summary run always carries the plots
            from .plots import write_plots

            plots = write_plots(found, Path(tmp), args.metric)
        try:
            run = wandb.init(
                entity=entity,
                project=project,
                group=group,
                job_type=REPORT_JOB_TYPE,
                name=f"report-{group}",
                tags=["report", f"by-{args.by}"],
                dir=str(where),
                config=dict(by=args.by, source=args.dir or project_path, group=group),
                settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S, silent=True),
            )
            table = wandb.Table(columns=rows[0], data=rows[1:])
            run.log(
                {
                    "report/groups": table,
                    "report/markdown": wandb.Html(f"<pre>{markdown}</pre>"),
                    **{f"report/{p.stem}": wandb.Image(str(p)) for p in plots},
                }
            )
            for g in groups:
                key = g["label"]
                for stat in ("n", "mean", "std", "sem", "ci95", "n_at_target"):
                    run.summary[f"{key}/{stat}"] = g[stat]
                if g.get("ci95_bounded"):  # the t-interval leaves [0, 100]: see stats
                    run.summary[f"{key}/ci95_bounded"] = g["ci95_bounded"]
            run.finish()
        except Exception as e:
            msg = " ".join(str(e).split())
            raise UserError(f"--log-to-wandb failed ({type(e).__name__}: {msg})") from e
