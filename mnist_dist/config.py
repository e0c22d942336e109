"""The training config: one strict dataclass, each step's origin recipe as its defaults.

``TrainConfig`` holds everything that changes what a run computes; it is hashed into the
trial id, saved as ``config.json`` and sent to W&B as the same dict. Where a run writes,
how it logs and whether it resumes are runtime flags (``Runtime``), kept apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from .errors import UserError
from .models import MODELS

# Every recipe's base: the origin study's NLL loss, SGD momentum 0.9, StepLR per epoch.
BASE_RECIPE: dict[str, Any] = dict(scheduler="step", weight_decay=0.0)
# Per step, on top of BASE_RECIPE: step1-4 are the origin study's recipes.
RECIPES: dict[str, dict[str, Any]] = {
    "step1": dict(lr=0.01, lr_step=15, lr_gamma=0.1, batch_size=128, epochs=20),
    "step2": dict(lr=0.01, lr_step=15, lr_gamma=0.1, batch_size=128, epochs=20),
    "step3": dict(lr=0.01, lr_step=15, lr_gamma=0.1, batch_size=64, epochs=20),
    "step4": dict(lr=0.018, lr_step=6, lr_gamma=0.12, batch_size=64, epochs=15),
    # Beyond the study: OneCycle (lr = its peak), chosen on a 5,000-image validation split.
    "step5": dict(scheduler="onecycle", lr=0.05, batch_size=64, epochs=15),
    "step6": dict(scheduler="onecycle", lr=0.05, batch_size=64, epochs=15),
}

MIXED_PRECISION = ("no", "bf16", "fp16")
SCHEDULERS = ("step", "onecycle")
TARGET_ACC = 99.4  # percent: the study's goal


@dataclass
class TrainConfig:
    """What a run computes. ``None`` fields take the step's recipe in ``resolve``."""

    step: str = "step4"
    seed: int = 0
    epochs: int | None = None
    batch_size: int | None = None  # per process, as in DDP/Accelerate
    lr: float | None = None
    momentum: float = 0.9
    scheduler: str | None = None  # "step": StepLR per epoch; "onecycle": OneCycleLR per batch
    lr_step: int | None = None  # StepLR step_size, in epochs ("step" only)
    lr_gamma: float | None = None  # StepLR factor ("step" only)
    weight_decay: float | None = None  # SGD's L2 term, on every parameter
    train_limit: int | None = None  # train on the first N training images only
    val_split: int = 0  # hold out the last N training images as a validation set, for tuning
    mixed_precision: str | None = None  # None: `accelerate launch`'s setting, else "no"
    eval_batch_size: int = 2000
    channels_last: bool = True  # NHWC: 36 vs 46 ms/step for step4 on this 2-core CPU
    compile: bool = False

    def resolve(self) -> TrainConfig:
        """Fill recipe defaults and validate; returns a new, complete config."""
        if self.step not in MODELS:
            raise UserError(
                f"unknown step {self.step!r}; choose one of: {', '.join(MODELS)} "
                "(see `mnist-dist models`)"
            )
        recipe = {**BASE_RECIPE, **RECIPES[self.step]}
        if self.scheduler == "onecycle":  # StepLR's knobs do not apply
            recipe = {k: v for k, v in recipe.items() if k not in ("lr_step", "lr_gamma")}
        cfg = dataclasses.replace(
            self, **{k: v for k, v in recipe.items() if getattr(self, k) is None}
        )
        if cfg.mixed_precision is None:  # honour `accelerate launch --mixed_precision`/config
            cfg.mixed_precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        if cfg.scheduler not in SCHEDULERS:
            raise UserError(
                f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {cfg.scheduler!r}"
            )
        if cfg.scheduler == "onecycle" and (cfg.lr_step, cfg.lr_gamma) != (None, None):
            raise UserError("--lr-step/--lr-gamma set StepLR; drop them with --scheduler onecycle")
        if cfg.scheduler == "step" and None in (cfg.lr_step, cfg.lr_gamma):
            raise UserError(f"--scheduler step needs --lr-step and --lr-gamma for {cfg.step}")
        counts = ("epochs", "batch_size", "eval_batch_size")
        for name in counts + (("lr_step",) if cfg.scheduler == "step" else ()):
            if getattr(cfg, name) < 1:
                flag = "--" + name.replace("_", "-")
                raise UserError(f"{flag} must be at least 1, got {getattr(cfg, name)}")
        if cfg.lr <= 0:
            raise UserError(f"--lr must be positive, got {cfg.lr}")
        if cfg.weight_decay < 0:
            raise UserError(f"--weight-decay must be at least 0, got {cfg.weight_decay}")
        if cfg.train_limit is not None and cfg.train_limit < 1:
            raise UserError(f"--train-limit must be at least 1, got {cfg.train_limit}")
        if cfg.val_split < 0:
            raise UserError(f"--val-split must be at least 0 images, got {cfg.val_split}")
        if cfg.mixed_precision not in MIXED_PRECISION:
            raise UserError(
                f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}, "
                f"got {cfg.mixed_precision!r}"
            )
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> TrainConfig:
        """Strict: an unknown key is an error that names it and the valid keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(
                f"unknown key {unknown[0]!r} in {where}; valid keys: {', '.join(sorted(known))}"
            )
        return cls(**data)

    def trial_id(self) -> str:
        """Stable identity of the resolved config: equal configs share one folder."""
        blob = json.dumps(self.resolve().to_dict(), sort_keys=True, separators=(",", ":"))
        return f"{self.step}-s{self.seed}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


@dataclass
class Runtime:
    """How a run executes and reports; never part of the trial id."""

    out: str | None = None
    data_dir: str | None = None
    download: bool = True  # fetch MNIST when the files are missing
    resume: bool = False
    cpu: bool = False
    wandb: str = "off"  # off | offline | online
    wandb_project: str = "mnist-dist"
    wandb_group: str | None = None
    progress: bool = True
