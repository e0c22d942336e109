"""The training config: one strict dataclass, each step's origin recipe as its defaults.

``TrainConfig`` holds everything that changes what a run computes; it is hashed into the
trial id, saved as ``config.json`` and sent to W&B as the same dict. It imports no torch:
commands that need no model (status, report, sweep --dry-run) start without it. Where a run writes,
how it logs and whether it resumes are runtime flags (``Runtime``), kept apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import UserError

# Every recipe's base: the origin study's NLL loss, SGD momentum 0.9, StepLR per epoch, and
# its augmentation (rotation +-15 degrees, a 22-px centre crop with p=0.1). A field at its
# base value reproduces the origin exactly and stays out of the trial id.
BASE_RECIPE: dict[str, Any] = dict(
    momentum=0.9,
    scheduler="step",
    weight_decay=0.0,
    optimizer="sgd",
    nesterov=False,
    pct_start=0.3,
    anneal="cos",
    label_smoothing=0.0,
    ema_decay=0.0,
    bn_recal=False,
    headline="model",
    rotate_deg=15.0,
    crop_p=0.1,
    translate=0.0,
    scale=0.0,
)
# Per step, on top of BASE_RECIPE: step1-4 are the origin study's recipes.
RECIPES: dict[str, dict[str, Any]] = {
    "step1": dict(lr=0.01, lr_step=15, lr_gamma=0.1, batch_size=128, epochs=20),
    "step2": dict(lr=0.01, lr_step=15, lr_gamma=0.1, batch_size=128, epochs=20),
    "step3": dict(lr=0.01, lr_step=15, lr_gamma=0.1, batch_size=64, epochs=20),
    "step4": dict(lr=0.018, lr_step=6, lr_gamma=0.12, batch_size=64, epochs=15),
    # Beyond the study: OneCycle (lr = its peak), chosen on a 5,000-image validation split.
    "step5": dict(scheduler="onecycle", lr=0.05, batch_size=64, epochs=15),
    "step6": dict(scheduler="onecycle", lr=0.05, batch_size=64, epochs=15),
    # Candidates of the issue #12 search, each with its published design's recipe
    # (results/goal/): their tuned variants are sweep overrides, their winners new steps.
    "b7784": dict(scheduler="onecycle", lr=0.05, pct_start=0.2, label_smoothing=0.02,
                  batch_size=128, epochs=15, rotate_deg=10.0, crop_p=0.0, translate=0.1),
    "c6198": dict(scheduler="onecycle", lr=0.05, momentum=0.98, weight_decay=5e-5,
                  batch_size=64, epochs=15, rotate_deg=10.0, crop_p=0.0, translate=0.1),
    "a7608": dict(optimizer="adamw", lr=0.005, lr_step=8, lr_gamma=0.1, batch_size=64,
                  epochs=15, rotate_deg=10.0, crop_p=0.0, translate=0.1),
    "d3702": dict(scheduler="onecycle", lr=0.1, pct_start=0.2, anneal="linear", momentum=0.0,
                  batch_size=32, epochs=15, rotate_deg=10.0, crop_p=0.0, translate=0.1,
                  scale=0.1),
}  # fmt: skip
# Issue #12's pick: the search's best on validation (99.48 +- 0.02, n=3; results/goal/) was
# b7784 with its published recipe, registered under a step name of its own.
RECIPES["step7"] = dict(RECIPES["b7784"])
# The searchable family (``models.family``; issue #23): its shape is config fields, so a
# tune searches widths, depths, the 1x1 squeeze and the head like any other knob. Its base
# recipe is step7's; its base shape 8-8 | 16-16 | 16 with a linear head (6,706 params).
SHAPE = ("width1", "width2", "width3", "depth1", "depth2", "depth3", "squeeze", "head")
HEADS = ("linear", "conv")
FAMILY_SHAPE: dict[str, Any] = dict(width1=8, width2=16, width3=16, depth1=2, depth2=2,
                                    depth3=1, squeeze=0, head="linear")  # fmt: skip
RECIPES["family"] = dict(RECIPES["step7"], **FAMILY_SHAPE)
# Steps promoted from a search (``tune --promote``) live in steps.toml beside this file:
# {name: {"model": a registered model, "description": ..., "recipe": {...}}}. The variable
# MNIST_DIST_STEPS_FILE names another registry file (a lab's own, or a test's).
STEPS_FILE = Path(os.environ.get("MNIST_DIST_STEPS_FILE") or Path(__file__).parent / "steps.toml")


def _promoted() -> dict[str, dict[str, Any]]:
    try:
        steps = tomllib.loads(STEPS_FILE.read_text()) if STEPS_FILE.is_file() else {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{STEPS_FILE}: not valid TOML ({e}); fix or remove the last "
                        "promoted step") from None  # fmt: skip
    bad = [n for n, t in steps.items() if not isinstance(t.get("recipe"), dict) or "model" not in t]
    if bad:
        raise UserError(f'{STEPS_FILE}: [{bad[0]}] needs model = "..." and a [{bad[0]}.recipe]')
    return steps


PROMOTED: dict[str, dict[str, Any]] = _promoted()
RECIPES.update({name: dict(step["recipe"]) for name, step in PROMOTED.items()})

MIXED_PRECISION = ("no", "bf16", "fp16")
SCHEDULERS = ("step", "onecycle")
OPTIMIZERS = ("sgd", "adamw")
ANNEALS = ("cos", "linear")
HEADLINES = ("model", "ema")
TEST_EVALS = ("every", "final", "never")
ONECYCLE_ONLY = ("pct_start", "anneal", "final_lr")
TARGET_ACC = 99.4  # percent: the study's goal
SEED_MAX = 2**32 - 1  # numpy seeds the data order: seeds are 0 .. 2**32 - 1


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
    momentum: float | None = _field(None, "SGD momentum")
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
    optimizer: str | None = _field(None, "sgd (momentum, optional Nesterov) or adamw",
                                   choices=OPTIMIZERS)  # fmt: skip
    nesterov: bool | None = _field(None, "Nesterov momentum (sgd)")
    pct_start: float | None = _field(None, "OneCycle: fraction of the steps spent warming up")
    anneal: str | None = _field(None, "OneCycle: anneal shape", choices=ANNEALS)
    final_lr: float | None = _field(
        None, "OneCycle: LR at the last step", unset="the peak / 25 / 10,000 (PyTorch's)"
    )
    label_smoothing: float | None = _field(None, "label smoothing of the training loss")
    ema_decay: float | None = _field(
        None, "EMA of the weights per step (torch.optim.swa_utils), e.g. 0.999; 0: off"
    )
    bn_recal: bool | None = _field(
        None,
        "after the last epoch, recompute every BatchNorm's statistics on the clean "
        "training images (no augmentation; no held-out image is read)",
    )
    headline: str | None = _field(
        None, "weights whose accuracy is the result: model or ema", choices=HEADLINES
    )
    rotate_deg: float | None = _field(None, "augmentation: rotation, uniform +-degrees")
    crop_p: float | None = _field(None, "augmentation: probability of the 22-px centre crop")
    translate: float | None = _field(None, "augmentation: shift, uniform +-fraction of 28 px")
    scale: float | None = _field(None, "augmentation: zoom, uniform 1 +- this")
    # The family's shape (step "family", or a step promoted from it); None for other steps.
    width1: int | None = _field(None, "family: channels of the 3x3 convs at 28 px")
    width2: int | None = _field(None, "family: channels of the 3x3 convs at 14 px")
    width3: int | None = _field(None, "family: channels of the 3x3 convs at 7 px")
    depth1: int | None = _field(None, "family: 3x3 convs at 28 px, before the first max-pool")
    depth2: int | None = _field(None, "family: 3x3 convs at 14 px, before the second max-pool")
    depth3: int | None = _field(None, "family: 3x3 convs at 7 px")
    squeeze: int | None = _field(None, "family: a 1x1 conv to this many channels before each "
                                 "max-pool; 0: none")  # fmt: skip
    head: str | None = _field(None, "family: linear (GAP, then a linear layer) or conv "
                              "(a 1x1 conv to 10, then GAP)", choices=HEADS)  # fmt: skip
    test_eval: str = _field(
        "every", "score the test set every epoch, after the final one only, or never "
        "(tuning runs: never)", choices=TEST_EVALS,
    )  # fmt: skip
    # Processes training together. batch_size is per process, so it changes the numbers;
    # set from the launcher (WORLD_SIZE) or the sweep's [resources], never a flag.
    world_size: int = _field(1, "processes training together", cli=False)

    def resolve(self) -> TrainConfig:
        """Fill recipe defaults and validate; returns a new, complete config.

        Pure: reads no environment, so one config gives one trial id in any shell.
        """
        if self.step not in RECIPES:  # every registered model has its recipe (test_models)
            raise UserError(
                f"unknown step {self.step!r}; choose one of: {', '.join(RECIPES)} "
                "(see `mnist-dist models`)"
            )
        recipe = {**BASE_RECIPE, **RECIPES[self.step]}
        shaped = [k for k in SHAPE if getattr(self, k) is not None]
        if shaped and SHAPE[0] not in recipe:
            raise UserError(f"{_flag(shaped[0])} shapes the model family; add --step family "
                            f"({self.step} has a fixed shape)")  # fmt: skip
        scheduler = self.scheduler or recipe["scheduler"]
        # The other scheduler's knobs do not apply: they stay None.
        skip = ("lr_step", "lr_gamma") if scheduler == "onecycle" else ONECYCLE_ONLY
        recipe = {k: v for k, v in recipe.items() if k not in skip}
        onecycle_set = [k for k in ONECYCLE_ONLY if getattr(self, k) is not None]
        if onecycle_set and scheduler != "onecycle":
            flag = "--" + onecycle_set[0].replace("_", "-")
            raise UserError(f"{flag} sets OneCycle; add --scheduler onecycle or drop it")
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
        for name, allowed in (("mixed_precision", MIXED_PRECISION), ("optimizer", OPTIMIZERS),
                              ("anneal", ANNEALS), ("headline", HEADLINES),
                              ("test_eval", TEST_EVALS)):  # fmt: skip
            if getattr(cfg, name) not in allowed and not (
                name in ONECYCLE_ONLY and cfg.scheduler == "step"
            ):
                flag = "--" + name.replace("_", "-")
                raise UserError(
                    f"{flag} must be one of {', '.join(allowed)}, got {getattr(cfg, name)!r}"
                )
        _check_ranges(cfg)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def shape(self) -> dict[str, Any]:
        """The family's shape fields that are set: ``models.build_model``'s keywords."""
        return {k: getattr(self, k) for k in SHAPE if getattr(self, k) is not None}

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
            elif f.name not in V1_FIELDS and (value == base or value is None):
                continue  # at its base value, or not applying (another scheduler's knob)
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
        diff = [
            f"{k}={identity_value(mine, k)}"
            for k in mine | recipe
            if identity_value(mine, k) != identity_value(recipe, k)
        ]
        return f"{self.step} ({', '.join(diff)})" if diff else self.step


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_ranges(cfg: TrainConfig) -> None:
    """Values that make no sense are one-line errors naming the flag, before anything is
    written: a NaN passes every comparison, so finiteness is checked first."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{_flag(f.name)} must be a finite number, got {value}")
    if not 0 <= cfg.seed <= SEED_MAX:
        raise UserError(f"--seed must be in [0, {SEED_MAX}] (numpy's range), got {cfg.seed}")
    if not 0 <= cfg.momentum < 1:
        raise UserError(f"--momentum must be in [0, 1), got {cfg.momentum}")
    if cfg.lr_gamma is not None and cfg.lr_gamma <= 0:
        raise UserError(f"--lr-gamma must be above 0, got {cfg.lr_gamma}")
    ranges = dict(  # field: (low, high, closed at high)
        crop_p=(0.0, 1.0, True),
        translate=(0.0, 0.5, False),
        scale=(0.0, 1.0, False),
        label_smoothing=(0.0, 1.0, False),
        ema_decay=(0.0, 1.0, False),
        pct_start=(0.0, 1.0, False),
    )
    for name, (low, high, closed) in ranges.items():
        value = getattr(cfg, name)
        if value is None:  # pct_start under StepLR: does not apply
            continue
        if not (low <= value <= high if closed else low <= value < high):
            flag = "--" + name.replace("_", "-")
            raise UserError(
                f"{flag} must be in [{low}, {high}{']' if closed else ')'}, got {value}"
            )
    if not 0 <= cfg.rotate_deg <= 180:
        raise UserError(f"--rotate-deg must be in [0, 180] degrees, got {cfg.rotate_deg}")
    if cfg.final_lr is not None and not 0 < cfg.final_lr < cfg.lr:
        raise UserError(f"--final-lr must be above 0 and below --lr ({cfg.lr}), got {cfg.final_lr}")
    if cfg.nesterov and (cfg.optimizer != "sgd" or cfg.momentum <= 0):
        raise UserError("--nesterov needs --optimizer sgd and a --momentum above 0")
    if cfg.headline == "ema" and cfg.ema_decay == 0:
        raise UserError("--headline ema needs an EMA: set --ema-decay, e.g. 0.999")
    if cfg.width1 is not None:
        _check_shape(cfg)


SHAPE_MAX = 256  # channels, and 1x1 squeeze channels: far past any sub-8k model


def _check_shape(cfg: TrainConfig) -> None:
    for name in ("width1", "width2", "width3"):
        if not 1 <= getattr(cfg, name) <= SHAPE_MAX:
            raise UserError(f"{_flag(name)} must be in [1, {SHAPE_MAX}] channels, "
                            f"got {getattr(cfg, name)}")  # fmt: skip
    for name in ("depth1", "depth2", "depth3"):
        if not 1 <= getattr(cfg, name) <= 8:
            raise UserError(f"{_flag(name)} must be in [1, 8] convs, got {getattr(cfg, name)}")
    if not 0 <= cfg.squeeze <= SHAPE_MAX:
        raise UserError(f"--squeeze must be in [0, {SHAPE_MAX}] channels (0: none), "
                        f"got {cfg.squeeze}")  # fmt: skip
    if cfg.head not in HEADS:
        raise UserError(f"--head must be one of {', '.join(HEADS)}, got {cfg.head!r}")


def digest(data: dict[str, Any]) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def identity_value(identity: dict[str, Any], key: str) -> Any:
    """``key``'s value in an identity: a key left out stands for its base value (Dora's
    rule in ``TrainConfig.identity``), or None for a OneCycle knob under StepLR."""
    if key in identity:
        return identity[key]
    if key in ONECYCLE_ONLY and identity.get("scheduler") != "onecycle":
        return None
    default = {f.name: f.default for f in dataclasses.fields(TrainConfig)}.get(key)
    return BASE_RECIPE.get(key, default)


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
    seeds: list[int] | None = None  # train these seeds of cfg at once, packed (training.packed)
    # Test-only: train in float64, where a packed and a separate run agree to 1e-8
    # (MNIST_DIST_TEST_FLOAT64=1; in float32 the two differ by reduction order only).
    float64: bool = False
