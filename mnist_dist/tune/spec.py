"""Tune files: strict TOML -> a search space over TrainConfig fields, with the test set locked.

A tune file (``jobs/*_tune.toml``; issue #23)::

    name = "goal"                  # tune folder: runs/tunes/<name>
    seeds = [0, 1, 2]              # validation seeds per trial: the objective is their mean
    max_params = 8000              # a sampled model above this never trains
    max_epochs = 15                # optional: `epochs` may not exceed it
    max_seconds = 300              # optional: a trial that trained longer is infeasible;
                                   # or { times = 0.45, step = "step7" }: that fraction of
                                   # the step's time for a trial's work, timed by each
                                   # worker on its own CPU when it starts (worker.calibrate)
    [fixed]                        # TrainConfig fields every trial shares
    step = "step7"
    epochs = 15
    val_split = 5000               # required: the objective's images
    [space]                        # TrainConfig fields searched, one table each
    lr = { low = 0.01, high = 0.2, log = true }
    batch_size = { choices = [64, 128] }
    pct_start = { low = 0.1, high = 0.4, step = 0.05 }
    [[start]]                      # optional: trials enqueued when the study is new, in
    lr = 0.05                      # order (Optuna's enqueue_trial): known recipes to start
    batch_size = 128               # from; a field left out is sampled
    [sampler]                      # tpe (default) or random; seeded
    seed = 0
    startup_trials = 10            # tpe: random trials before it models the space
    [pruner]                       # median, percentile, threshold, successive_halving or
    name = "median"                # none, asked at these epochs
    at_epochs = [3, 6, 9]
    startup_trials = 5             # trials that trained to the end before it prunes
    # name = "threshold", lower = 95.0: prune a trial under 95% validation accuracy
    [resources]                    # as in sweep files (one process per worker)
    pack_seeds = 3                 # = len(seeds): a trial's seeds train as one packed net

The objective is the mean final-epoch validation accuracy over ``seeds``. ``epochs`` may be
searched (up to ``max_epochs``); ``val_split`` and ``test_eval`` can be fixed, never
searched; ``test_eval`` is always "never" and ``val_split`` above 0, so no trial of a tune
ever scores the test set.
Every table is strict: an unknown key or field is a one-line error naming the valid ones.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import BASE_RECIPE, ONECYCLE_ONLY, RECIPES, TrainConfig
from ..errors import UserError
from ..sweeps.spec import Resources, _strict, _train_fields, check_resources, read_job_file

TOP_KEYS = ("name", "description", "seeds", "max_params", "max_epochs", "max_seconds", "trials",
            "fixed", "space", "start", "sampler", "pruner", "resources")  # fmt: skip
NEVER_SEARCHED = ("val_split", "test_eval", "seed", "world_size")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "percentile", "threshold", "successive_halving", "none")
FIRST = ("step", "scheduler")  # sampled first: whether another field applies depends on them


@dataclass
class Dimension:
    """One searched field: a float or int range (``log``, ``step``) or ``choices``."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    def suggest(self, trial) -> Any:
        """This field's value for an Optuna trial (its ``suggest_*``, by the field's type)."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, self.choices)
        if _field_type(self.name) is int:
            step = int(self.step or 1)
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=step,
                                     log=self.log)  # fmt: skip
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


@dataclass
class Sampler:
    name: str = "tpe"
    seed: int = 0  # worker k samples with seed + k
    multivariate: bool = False  # tpe: model the fields jointly (Optuna's multivariate, group)
    startup_trials: int = 10  # tpe: random samples before it models (Optuna's 10)


@dataclass
class Pruner:
    name: str = "median"
    at_epochs: list[int] = field(default_factory=list)  # empty: never prunes
    startup_trials: int = 5  # median: trials that must finish before it prunes (Optuna's 5)
    percentile: float = 25.0  # percentile: prune below this percentile of the others (0-100)
    # threshold: prune a trial whose validation accuracy (%) is below this at an at_epoch.
    # Unlike a percentile, it judges a trial alone: fair when trials differ in epochs.
    lower: float | None = None


@dataclass
class TuneSpec:
    name: str
    file: str
    seeds: list[int]
    max_params: int
    fixed: dict[str, Any]
    space: list[Dimension]
    sampler: Sampler
    pruner: Pruner
    resources: Resources
    max_epochs: int | None = None
    # Training seconds (the epochs' `seconds`, a pack's whole) above which a trial is
    # infeasible, as over max_params: TPE's second constraint. Machine-bound: a number holds
    # on the CPU it was measured on; (times, step) is set by each worker on its own CPU.
    max_seconds: float | None = None
    time_reference: tuple[float, str] | None = None
    trials: int = 20  # `tune --trials` default: a total over every call
    description: str = ""
    start: list[dict[str, Any]] = field(default_factory=list)  # enqueued on a new study

    def config(self, trial, seed: int) -> TrainConfig:
        """The resolved config of an Optuna trial's sample, for one of ``seeds``."""
        return self.sample(lambda d: d.suggest(trial), seed)

    def sample(self, pick, seed: int) -> TrainConfig:
        """The config of the values ``pick(dimension)`` gives. A conditional space: a field
        of the other scheduler (OneCycle's pct_start under StepLR, StepLR's lr_step under
        OneCycle) is neither sampled nor kept from [fixed], as Optuna's define-by-run allows."""
        values: dict[str, Any] = {}
        for d in sorted(self.space, key=lambda d: d.name not in FIRST):  # stable: step first
            if applies(d.name, {**self.fixed, **values}):
                values[d.name] = pick(d)
        return TrainConfig(**self.fields(values), seed=seed).resolve()

    def fields(self, values: dict[str, Any]) -> dict[str, Any]:
        """The config fields of sampled ``values``: with the [fixed] ones that apply."""
        chosen = {**self.fixed, **values}
        return {k: v for k, v in chosen.items() if k in values or applies(k, chosen)}

    @property
    def packed(self) -> bool:
        """A trial's seeds train as one packed net ([resources] pack_seeds = len(seeds))."""
        return len(self.seeds) > 1 and self.resources.pack_seeds == len(self.seeds)

    def configs(self, trial) -> list[TrainConfig]:
        """The trial's runs: its sample, once per seed (Optuna repeats a suggestion)."""
        return [self.config(trial, s) for s in self.seeds]


def applies(name: str, chosen: dict[str, Any]) -> bool:
    """Whether ``name`` means anything beside the values ``chosen`` so far (a scheduler's own
    knobs under the other scheduler do not)."""
    step = chosen.get("step", TrainConfig.step)
    recipe = {**BASE_RECIPE, **RECIPES.get(step, {})}
    scheduler = chosen.get("scheduler") or recipe.get("scheduler")
    if name in ONECYCLE_ONLY:
        return scheduler == "onecycle"
    if name in ("lr_step", "lr_gamma"):
        return scheduler == "step"
    return True


def _field_type(name: str) -> type:
    hint = typing.get_type_hints(TrainConfig)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _dimension(name: str, table: Any, where: str) -> Dimension:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if name not in fields:
        raise UserError(f"unknown field {name!r} in {where}; valid: {', '.join(sorted(fields))}")
    if name in NEVER_SEARCHED:
        raise UserError(f"{where}.{name} cannot be searched: fix it in [fixed] (or leave it out)")
    dim = Dimension(name=name, **_strict(_DimensionKeys, table, f"{where}.{name}"))
    kind = _field_type(name)
    if dim.choices is not None:
        if dim.low is not None or dim.high is not None or not dim.choices:
            raise UserError(f"{where}.{name}: give either choices = [...] (non-empty) or low/high")
        return dim
    if kind not in (int, float):
        raise UserError(f"{where}.{name} is {kind.__name__}: search it with choices = [...]")
    if dim.low is None or dim.high is None:
        raise UserError(f"{where}.{name} needs low and high (or choices = [...])")
    if not all(math.isfinite(v) for v in (dim.low, dim.high)) or not dim.low < dim.high:
        raise UserError(f"{where}.{name}: low must be below high, both finite")
    if dim.log and (dim.low <= 0 or dim.step is not None):
        raise UserError(f"{where}.{name}: log needs low above 0 and no step")
    if kind is int and not (float(dim.low).is_integer() and float(dim.high).is_integer()):
        raise UserError(f"{where}.{name} is an int field: low and high must be whole numbers")
    return dim


@dataclass
class _DimensionKeys:  # the keys a [space] entry may hold, for _strict
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list | None = None


def load_tune(path: str | Path) -> TuneSpec:
    """Read and validate a tune file; every problem is a one-line ``UserError``."""
    path = Path(path)
    data = read_job_file(path, "tune", TOP_KEYS)
    name = data["name"]
    seeds = data.get("seeds")
    if (not isinstance(seeds, list) or not seeds or len(set(map(str, seeds))) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):  # fmt: skip
        raise UserError(f"{path}: seeds must be a non-empty list of distinct ints, e.g. [0, 1, 2]")
    numbers = {}
    for key in ("max_params", "max_epochs", "trials"):
        value = data.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 1):  # fmt: skip
            raise UserError(f"{path}: {key} must be a whole number of at least 1, got {value!r}")
        numbers[key] = value
    max_seconds, reference = data.get("max_seconds"), None
    if isinstance(max_seconds, dict):
        reference, max_seconds = _time_reference(max_seconds, path), None
    elif max_seconds is not None and not _positive(max_seconds):
        raise UserError(f"{path}: max_seconds must be a number of seconds above 0, or "
                        '{ times = 0.45, step = "step7" }')  # fmt: skip
    if numbers["max_params"] is None:
        raise UserError(f"{path}: max_params is required (the parameter budget, e.g. 8000)")
    fixed = _train_fields(data.get("fixed", {}), f"{path} [fixed]")
    if "seed" in fixed:
        raise UserError(f"{path} [fixed].seed: a trial's seeds are `seeds = [...]`; remove it")
    if fixed.get("test_eval", "never") != "never":
        raise UserError(f"{path} [fixed].test_eval must be \"never\": a tune never scores the "
                        "test set")  # fmt: skip
    if fixed.get("val_split", 0) < 1:
        raise UserError(f"{path} [fixed].val_split must hold validation images (e.g. 5000): "
                        "the objective is the validation accuracy")  # fmt: skip
    fixed["test_eval"] = "never"
    space_raw = data.get("space", {})
    if not isinstance(space_raw, dict) or not space_raw:
        raise UserError(f"{path}: [space] must name at least one field to search")
    space = [_dimension(k, v, f"{path} [space]") for k, v in space_raw.items()]
    both = sorted(set(fixed) & {d.name for d in space})
    idle = [
        d.name
        for d in space
        if not set(FIRST) & {x.name for x in space} and not applies(d.name, fixed)
    ]
    if idle:
        raise UserError(f"{path} [space].{idle[0]} never applies under this step's scheduler; "
                        "search scheduler too, or drop it")  # fmt: skip
    if both:
        raise UserError(f"{path}: {both[0]!r} is in both [fixed] and [space]; keep one")
    sampler = Sampler(**_strict(Sampler, data.get("sampler", {}), f"{path} [sampler]"))
    if sampler.name not in SAMPLERS:
        raise UserError(f"{path} [sampler].name must be one of {', '.join(SAMPLERS)}")
    if not isinstance(sampler.startup_trials, int) or sampler.startup_trials < 0:
        raise UserError(f"{path} [sampler].startup_trials must be a whole number, at least 0")
    pruner = Pruner(**_strict(Pruner, data.get("pruner", {}), f"{path} [pruner]"))
    if pruner.name not in PRUNERS:
        raise UserError(f"{path} [pruner].name must be one of {', '.join(PRUNERS)}")
    if not isinstance(pruner.startup_trials, int) or pruner.startup_trials < 0:
        raise UserError(f"{path} [pruner].startup_trials must be a whole number, at least 0")
    if not isinstance(pruner.percentile, (int, float)) or not 0 < pruner.percentile < 100:
        raise UserError(f"{path} [pruner].percentile must be between 0 and 100, e.g. 25")
    if (pruner.name == "threshold") != (pruner.lower is not None) or not (
            pruner.lower is None or _positive(pruner.lower) and pruner.lower < 100):  # fmt: skip
        raise UserError(f"{path} [pruner]: lower (a validation accuracy in %, e.g. 95.0) goes "
                        'with name = "threshold", and only with it')  # fmt: skip
    resources = Resources(**_strict(Resources, data.get("resources", {}), f"{path} [resources]"))
    if resources.world_size > 1:
        raise UserError(f"{path} [resources]: a tune worker trains one trial in one process; "
                        "set nodes and tasks_per_node to 1 (--workers sets how many)")  # fmt: skip
    if resources.pack_seeds not in (1, len(seeds)):
        raise UserError(f"{path} [resources].pack_seeds must be 1 (one seed after another) or "
                        f"{len(seeds)} (the trial's seeds as one packed net)")  # fmt: skip
    spec = TuneSpec(
        name=name, file=str(path), seeds=seeds, max_params=numbers["max_params"], fixed=fixed,
        space=space, sampler=sampler, pruner=pruner, resources=resources,
        max_epochs=numbers["max_epochs"], trials=numbers["trials"] or 20,
        max_seconds=max_seconds, time_reference=reference,
        description=str(data.get("description", "")),
        start=_start(data.get("start", []), space, path),
    )  # fmt: skip
    _check_fixed(spec, path)
    return spec


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < math.inf


def _time_reference(table: dict[str, Any], path: Path) -> tuple[float, str]:
    """``max_seconds = { times = 0.45, step = "step7" }``: (times, step), checked."""
    from ..models import MODELS

    if set(table) != {"times", "step"}:
        raise UserError(f'{path}: max_seconds as a table is {{ times = 0.45, step = "step7" }}'
                        f"; got keys {', '.join(sorted(table)) or 'none'}")  # fmt: skip
    if not _positive(table["times"]):
        raise UserError(f"{path}: max_seconds.times must be a number above 0, e.g. 0.45")
    if table["step"] not in RECIPES or table["step"] not in MODELS:
        raise UserError(f"{path}: max_seconds.step {table['step']!r} is no registered step "
                        "with a recipe (mnist-dist models lists them)")  # fmt: skip
    return float(table["times"]), table["step"]


def _start(tables: Any, space: list[Dimension], path: Path) -> list[dict[str, Any]]:
    """``[[start]]`` tables, checked: each names searched fields, with values in their range."""
    where = f"{path} [[start]]"
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise UserError(f"{where}: write each starting trial as a [[start]] table")
    dims = {d.name: d for d in space}
    for i, table in enumerate(tables, 1):
        for name, value in table.items():
            d = dims.get(name)
            if d is None:
                raise UserError(f"{where} #{i}: {name!r} is not searched; [space] has "
                                f"{', '.join(dims)}")  # fmt: skip
            if d.choices is not None:
                ok = value in d.choices and type(value) in {type(c) for c in d.choices}
            else:
                kind = _field_type(name)
                ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                      and (kind is float or isinstance(value, int))
                      and d.low <= value <= d.high)  # fmt: skip
            if not ok:
                allowed = d.choices if d.choices is not None else f"[{d.low}, {d.high}]"
                raise UserError(f"{where} #{i}: {name} = {value!r} is outside its [space] "
                                f"range {allowed}")  # fmt: skip
    return tables


def _check_fixed(spec: TuneSpec, path: Path) -> None:
    """The fixed values as a config (each range's low end sampled): TrainConfig's checks,
    the epoch cap and the pruner's epochs, at parse time."""

    def low(d: Dimension) -> Any:
        value = d.choices[0] if d.choices is not None else d.low
        return int(value) if d.choices is None and _field_type(d.name) is int else value

    try:
        cfg = spec.sample(low, spec.seeds[0])
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    most = max([cfg.epochs] + [int(d.high) for d in spec.space if d.name == "epochs"])
    if spec.max_epochs is not None and most > spec.max_epochs:
        raise UserError(f"{path}: epochs ({most}) is over max_epochs ({spec.max_epochs})")
    late = [e for e in spec.pruner.at_epochs if not 1 <= e < cfg.epochs]
    if late:
        raise UserError(f"{path} [pruner].at_epochs: {late[0]} is not an epoch before the last "
                        f"({cfg.epochs})")  # fmt: skip
    check_resources(spec.resources, f"{path} [resources]")
