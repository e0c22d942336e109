"""W&B tracking through Accelerate's tracker, on the main process, never fatal.

group = the sweep name (``--wandb-group``; a single run defaults to its step), job_type =
the step, tags ``step``/``seed<N>``, run name ``<step>-s<seed>``. The run id is kept in the
run folder (``wandb_run_id``) so a resumed or requeued trial continues the same W&B run.
Any W&B failure (no key, no network, bad settings) warns once and turns tracking off;
local results are written regardless.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from .config import Runtime, TrainConfig

RUN_ID_FILE = "wandb_run_id"
INIT_TIMEOUT_S = 30  # bounded wait for an unreachable server, then we carry on without it
SUMMARY_KEYS = (
    "final_test_acc",
    "best_test_acc",
    "best_epoch",
    "params",
    "first_epoch_at_target",
    "wall_seconds",
    "world_size",
)


def warn(msg: str) -> None:
    print(f"mnist-dist: warning: {msg}", file=sys.stderr, flush=True)


def run_id_for(out: Path) -> str:
    """The W&B run id of this run folder, created once and reused on resume."""
    path = out / RUN_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    import wandb

    run_id = wandb.util.generate_id()
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(run_id + "\n")
    os.replace(tmp, path)
    return run_id


def init_kwargs(cfg: TrainConfig, rt: Runtime, out: Path, run_id: str) -> dict[str, Any]:
    import wandb

    return dict(
        group=rt.wandb_group or cfg.step,
        job_type=cfg.step,
        tags=[cfg.step, f"seed{cfg.seed}"],
        name=f"{cfg.step}-s{cfg.seed}",
        id=run_id,
        resume="allow",
        dir=str(out),
        mode=rt.wandb,
        settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S, silent=True),
    )


class Tracker:
    """Thin, failure-proof wrapper over ``accelerator.log``; a no-op when W&B is off."""

    def __init__(self, accelerator=None):
        self.accelerator = accelerator

    @staticmethod
    def log_with(rt: Runtime) -> str | None:
        return None if rt.wandb == "off" else "wandb"

    @classmethod
    def start(cls, accelerator, cfg: TrainConfig, rt: Runtime, out: Path) -> Tracker:
        if rt.wandb == "off" or not accelerator.is_main_process:
            return cls(None)
        try:
            import wandb

            if rt.wandb == "online" and not (os.environ.get("WANDB_API_KEY") or wandb.api.api_key):
                warn("W&B online mode has no API key (run `wandb login`); tracking is off")
                return cls(None)
            kwargs = init_kwargs(cfg, rt, out, run_id_for(out))
            accelerator.init_trackers(rt.wandb_project, cfg.to_dict(), {"wandb": kwargs})
            return cls(accelerator)
        except Exception as e:  # W&B must never stop training
            warn(f"W&B could not start ({type(e).__name__}: {e}); tracking is off")
            return cls(None)

    def _call(self, what: str, fn) -> None:
        if self.accelerator is None:
            return
        try:
            fn()
        except Exception as e:
            warn(f"W&B {what} failed ({type(e).__name__}: {e}); tracking is off")
            self.accelerator = None

    def log(self, row: dict[str, Any]) -> None:
        self._call("log", lambda: self.accelerator.log(row, step=row["epoch"]))

    def finish(self, result: dict[str, Any]) -> None:
        def update():
            run = self.accelerator.get_tracker("wandb", unwrap=True)
            run.summary.update({k: result[k] for k in SUMMARY_KEYS})

        self._call("summary", update)
