"""The training config: one strict dataclass, each step's origin recipe as its defaults.

``TrainConfig`` holds everything that changes what a run computes; it is hashed into the
trial id, saved as ``config.json`` and sent to W&B as the same dict. Where a run writes,
how it logs and whether it resumes are runtime flags (``Runtime``), kept apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
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


def _field(default: Any, help: str, **meta: Any) -> Any:
    """A config field with its ``--help`` text (``mnist-dist train`` builds its flags here)."""
    return field(default=default, metadata=dict(help=help, **meta))


@dataclass
class TrainConfig:
    """What a run computes. ``None`` fields take the step's recipe in ``resolve``."""

    step: str = _field("step4", "registered model (see `mnist-dist models`)")
    seed: int = _field(0, "seeds the model's init, the batch order and the augmentation")
    epochs: int | None = _field(None, "training epochs")
    batch_size: int | None = _field(None, "images per optimizer step, per process (as in DDP)")
    lr: float | None = _field(None, "learning rate (OneCycle: its peak)")
    momentum: float = _field(0.9, "SGD momentum")
    scheduler: str | None = _field(
        None, "step: StepLR per epoch; onecycle: OneCycleLR per batch", choices=SCHEDULERS
    )
    lr_step: int | None = _field(None, "StepLR step size, in epochs (scheduler step only)")
    lr_gamma: float | None = _field(None, "StepLR factor (scheduler step only)")
    weight_decay: float | None = _field(None, "SGD's L2 term, on every parameter")
    train_limit: int | None = _field(
        None, "train on the first N training images only", metavar="N", unset="all"
    )
    val_split: int = _field(
        0, "hold out the last N training images as a validation set, for tuning", metavar="N"
    )
    mixed_precision: str = _field(
        "no",
        "autocast dtype, fp16 on GPU only; `accelerate launch` may set it",
        choices=MIXED_PRECISION,
    )
    eval_batch_size: int = _field(2000, "evaluation batch; speed only, not in the trial id")
    channels_last: bool = _field(True, "NHWC memory format: 36 vs 46 ms/step for step4 on 2 cores")
    compile: bool = _field(False, "torch.compile the model")
    # Processes training together. batch_size is per process, so it changes the numbers;
    # set from the launcher (WORLD_SIZE) or the sweep's [resources], never a flag.
    world_size: int = _field(1, "processes training together", cli=False)

    def resolve(self) -> TrainConfig:
        """Fill recipe defaults and validate; returns a new, complete config.

        Pure: reads no environment, so one config gives one trial id in any shell.
        """
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
        if cfg.scheduler not in SCHEDULERS:
            raise UserError(
                f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {cfg.scheduler!r}"
            )
        if cfg.scheduler == "onecycle" and (cfg.lr_step, cfg.lr_gamma) != (None, None):
            raise UserError("--lr-step/--lr-gamma set StepLR; drop them with --scheduler onecycle")
        if cfg.scheduler == "step" and None in (cfg.lr_step, cfg.lr_gamma):
            raise UserError(f"--scheduler step needs --lr-step and --lr-gamma for {cfg.step}")
        counts = ("epochs", "batch_size", "eval_batch_size", "world_size")
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
        """Strict: an unknown key is an error naming it. A missing key (a config.json written
        before the field existed) takes the field's default, as the trial id does."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(
                f"unknown key {unknown[0]!r} in {where}; valid keys: {', '.join(sorted(known))}"
            )
        return cls(**data)

    def identity(self) -> dict[str, Any]:
        """What changes the numbers: the resolved fields, by Dora's rule for new fields.

        The first ids hashed all of V1_FIELDS. To keep every one of them, those stay in,
        with the speed-only ones pinned to their defaults (so no value of them moves an
        id); a field added since enters only when it differs from its base value.
        """
        cfg = self.resolve()
        out = {}
        for f in dataclasses.fields(cfg):
            value, base = getattr(cfg, f.name), BASE_RECIPE.get(f.name, f.default)
            if f.name in SPEED_ONLY:
                value = f.default
            elif f.name not in V1_FIELDS and value == base:
                continue
            out[f.name] = value
        return out

    def trial_id(self) -> str:
        """``<step>-s<seed>-<hash>``: equal identities share one folder (pinned by a test)."""
        return f"{self.step}-s{self.seed}-{digest(self.identity())}"

    def config_hash(self) -> str:
        """The identity less the seed: runs with one config_hash are seeds of one config."""
        return digest({k: v for k, v in self.identity().items() if k != "seed"})

    def label(self) -> str:
        """``step4``, or ``step4 (lr=0.05)``: the step and what differs from its recipe."""
        mine, recipe = self.identity(), TrainConfig(step=self.step, seed=self.seed).identity()
        diff = [f"{k}={mine.get(k)}" for k in mine | recipe if mine.get(k) != recipe.get(k)]
        return f"{self.step} ({', '.join(diff)})" if diff else self.step


def digest(data: dict[str, Any]) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


# The fields of the first trial ids (to 3f95ce0): always in the hash. Fields added since
# enter only when they differ from their base value, so old ids and folders stay valid.
V1_FIELDS = (
    "step", "seed", "epochs", "batch_size", "lr", "momentum", "scheduler", "lr_step",
    "lr_gamma", "weight_decay", "train_limit", "val_split", "mixed_precision",
    "eval_batch_size", "channels_last", "compile",
)  # fmt: skip
SPEED_ONLY = ("eval_batch_size",)  # same numbers at any value: never moves an id


@dataclass
class Runtime:
    """How a run executes and reports; never part of the trial id."""

    out: str | None = None
    data_dir: str | None = None
    download: bool = True  # fetch MNIST when the files are missing
    resume: bool = False
    cpu: bool = False
    threads: int | None = None  # torch threads; None: what SLURM or the launcher grants
    wandb: str = "off"  # off | offline | online
    wandb_project: str = "mnist-dist"
    wandb_group: str | None = None
    progress: bool = True
