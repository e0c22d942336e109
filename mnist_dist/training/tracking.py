"""W&B tracking, on the main process, never fatal.

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

from ..config import Runtime, TrainConfig
from ..fsio import write_json
from ..rundir import WANDB_STATE

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
    """One W&B run of one trial, failure-proof; a no-op when W&B is off.

    ``wandb.init(reinit="create_new")``: a seed pack (``train --seeds``) holds one run per
    seed in one process.
    """

    def __init__(self, run=None, out: Path | None = None, state: dict | None = None):
        self.run, self.out, self.state = run, out, state

    @classmethod
    def start(cls, cfg: TrainConfig, rt: Runtime, out: Path, main: bool = True) -> Tracker:
        if rt.wandb == "off" or not main:
            return cls(None)
        try:
            # Without a key, wandb.init would prompt on a terminal: check first, never wait.
            if rt.wandb == "online" and not has_credentials():
                warn("W&B online mode has no API key (run `wandb login`); tracking is off")
                return cls(None)
            import wandb

            state = wandb_state(out, rt.resume)
            config = dict(cfg.to_dict(), trial_id=cfg.trial_id(), config_hash=cfg.config_hash())
            kwargs = init_kwargs(cfg, rt, out, state["run_id"])
            run = wandb.init(project=rt.wandb_project, config=config, reinit="create_new", **kwargs)
            return cls(run, out, state)
        except Exception as e:  # W&B must never stop training
            warn(f"W&B could not start ({type(e).__name__}: {e}); tracking is off")
            return cls(None)

    def _call(self, what: str, fn) -> None:
        if self.run is None:
            return
        try:
            fn()
        except Exception as e:
            warn(f"W&B {what} failed ({type(e).__name__}: {e}); tracking is off")
            self.run = None

    def log(self, row: dict[str, Any]) -> None:
        """Log one epoch, then record that W&B has it (a crash in between re-sends it, and
        W&B drops a step it already has)."""
        if self.run is None or row["epoch"] <= self.state["logged_epoch"]:
            return
        self._call("log", lambda: self.run.log(row, step=row["epoch"]))
        if self.run is not None:
            self.state["logged_epoch"] = row["epoch"]
            write_json(self.out / WANDB_STATE, self.state)

    def catch_up(self, history: list[dict[str, Any]]) -> None:
        """Send the saved epochs W&B never received (a preemption after the checkpoint)."""
        for row in history:
            self.log(row)

    def finish(self, result: dict[str, Any]) -> None:
        """Write the summary and close the run, waiting at most FINISH_TIMEOUT_S."""
        self._call("summary", lambda: self.run.summary.update({k: result[k] for k in SUMMARY_KEYS}))
        run, self.run = self.run, None
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
