"""W&B tracking through Accelerate's tracker, on the main process, never fatal.

group = the run's config group, so W&B's grouped charts average the seeds of one config
and nothing else: a sweep's trials get ``<sweep>/<label>`` (``--wandb-group``), a single
run its label (``step4``, or ``step4 (lr=0.05)``). job_type = the step, tags
``step``/``seed<N>``, run name ``<step>-s<seed>``; the run config is the resolved config
plus ``trial_id`` and ``config_hash``. The run folder's ``wandb_run.json`` keeps the run id
(a resumed or requeued trial continues the same W&B run) and the last epoch W&B received:
the checkpoint is saved before an epoch is logged, so after a preemption between the two,
the resumed run logs the missing epochs first (``catch_up``) and never one twice.
Any W&B failure (no key, no network, bad settings) warns once and turns tracking off;
local results are written regardless.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import string
import sys
import threading
from pathlib import Path
from typing import Any

from .config import Runtime, TrainConfig
from .fsio import write_json
from .sweepdir import WANDB_STATE

INIT_TIMEOUT_S = 30  # bounded wait for an unreachable server, then we carry on without it
FINISH_TIMEOUT_S = 60  # bounded wait for the last upload; offline files stay for `wandb sync`
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
    """One line on stderr, however many lines the underlying error has."""
    print(f"mnist-dist: warning: {' '.join(msg.split())}", file=sys.stderr, flush=True)


def new_run_id() -> str:
    """8 characters of [a-z0-9], the shape of W&B's own run ids."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def wandb_state(out: Path, resume: bool) -> dict[str, Any]:
    """{"run_id", "logged_epoch"} of this run folder: kept on resume, new on a fresh start."""
    path = out / WANDB_STATE
    if resume and path.is_file():
        try:
            state = json.loads(path.read_text())
            if state.get("run_id"):
                return dict(run_id=str(state["run_id"]), logged_epoch=int(state["logged_epoch"]))
        except (OSError, ValueError, TypeError, KeyError):
            pass  # unreadable: start a new W&B run rather than fail the training
    state = dict(run_id=new_run_id(), logged_epoch=0)
    write_json(path, state)
    return state


def has_credentials() -> bool:
    """True when an API key is configured; never prompts and never contacts the server."""
    # login() answers False under WANDB_MODE=offline|disabled even with a key set, yet the
    # public API (mnist-dist report --wandb) still works with one: read the env var first.
    if os.environ.get("WANDB_API_KEY"):
        return True
    import wandb

    with contextlib.redirect_stderr(io.StringIO()):  # login() chats on stderr
        return bool(wandb.login(prompt=False, verify=False))


def init_kwargs(cfg: TrainConfig, rt: Runtime, out: Path, run_id: str) -> dict[str, Any]:
    import wandb

    return dict(
        group=(rt.wandb_group or cfg.label())[:128],  # W&B's limit for a group name
        job_type=cfg.step,
        tags=[cfg.step, f"seed{cfg.seed}"],
        name=f"{cfg.step}-s{cfg.seed}",
        id=run_id,
        resume="allow",
        dir=str(out),
        mode=rt.wandb,
        # W&B's own WANDB_INIT_TIMEOUT (seconds) may shorten or lengthen the wait.
        settings=wandb.Settings(
            init_timeout=float(os.environ.get("WANDB_INIT_TIMEOUT") or INIT_TIMEOUT_S),
            silent=True,
        ),
    )


class Tracker:
    """Thin, failure-proof wrapper over ``accelerator.log``; a no-op when W&B is off."""

    def __init__(self, accelerator=None, out: Path | None = None, state: dict | None = None):
        self.accelerator, self.out, self.state = accelerator, out, state

    @staticmethod
    def log_with(rt: Runtime) -> str | None:
        return None if rt.wandb == "off" else "wandb"

    @classmethod
    def start(cls, accelerator, cfg: TrainConfig, rt: Runtime, out: Path) -> Tracker:
        if rt.wandb == "off" or not accelerator.is_main_process:
            return cls(None)
        try:
            # Without a key, wandb.init would prompt on a terminal: check first, never wait.
            if rt.wandb == "online" and not has_credentials():
                warn("W&B online mode has no API key (run `wandb login`); tracking is off")
                return cls(None)
            state = wandb_state(out, rt.resume)
            kwargs = init_kwargs(cfg, rt, out, state["run_id"])
            config = dict(cfg.to_dict(), trial_id=cfg.trial_id(), config_hash=cfg.config_hash())
            accelerator.init_trackers(rt.wandb_project, config, {"wandb": kwargs})
            return cls(accelerator, out, state)
        except Exception as e:  # W&B must never stop training
            warn(f"W&B could not start ({type(e).__name__}: {e}); tracking is off")
            drop_wandb(accelerator)
            return cls(None)

    def _call(self, what: str, fn) -> None:
        if self.accelerator is None:
            return
        try:
            fn()
        except Exception as e:
            warn(f"W&B {what} failed ({type(e).__name__}: {e}); tracking is off")
            drop_wandb(self.accelerator)
            self.accelerator = None

    def log(self, row: dict[str, Any]) -> None:
        """Log one epoch, then record that W&B has it (a crash in between re-sends it, and
        W&B drops a step it already has)."""
        if self.accelerator is None or row["epoch"] <= self.state["logged_epoch"]:
            return
        self._call("log", lambda: self.accelerator.log(row, step=row["epoch"]))
        if self.accelerator is not None:
            self.state["logged_epoch"] = row["epoch"]
            write_json(self.out / WANDB_STATE, self.state)

    def catch_up(self, history: list[dict[str, Any]]) -> None:
        """Send the saved epochs W&B never received (a preemption after the checkpoint)."""
        for row in history:
            self.log(row)

    def finish(self, result: dict[str, Any]) -> None:
        """Write the summary and close the run, waiting at most FINISH_TIMEOUT_S."""
        if self.accelerator is None:
            return
        accelerator = self.accelerator

        def update():
            run = accelerator.get_tracker("wandb", unwrap=True)
            run.summary.update({k: result[k] for k in SUMMARY_KEYS})

        self._call("summary", update)
        run = accelerator.get_tracker("wandb", unwrap=True) if self.accelerator else None
        # Accelerate's end_training would finish the run again, unbounded: we own it now.
        drop_wandb(accelerator)
        self.accelerator = None
        if run is None:
            return
        done = threading.Event()

        def close():
            try:
                run.finish()
            except Exception as e:
                warn(f"W&B finish failed ({type(e).__name__}: {e})")
            done.set()

        threading.Thread(target=close, daemon=True, name="wandb-finish").start()
        if not done.wait(FINISH_TIMEOUT_S):
            warn(
                f"W&B did not finish within {FINISH_TIMEOUT_S} s; local results are written, "
                "sync the run later with `wandb sync`"
            )


def drop_wandb(accelerator) -> None:
    """Forget Accelerate's W&B tracker so that end_training never touches a broken run."""
    accelerator.trackers = [t for t in accelerator.trackers if t.name != "wandb"]
