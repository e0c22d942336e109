"""Sweep files: strict TOML (stdlib ``tomllib``) -> typed spec -> the list of trials.

A sweep file (see ``jobs/*.toml`` and the README's "Sweep files")::

    name = "smoke"                 # sweep folder: runs/sweeps/<name>, W&B group
    [grid]                         # cartesian product; each key a TrainConfig field, a list
    step = ["step1", "step4"]
    seed = [0, 1]
    [defaults]                     # TrainConfig fields shared by every trial
    epochs = 1
    [[trials]]                     # explicit extra trials, each over [defaults]
    step = "step2"
    seed = [7, 8]                  # a list: this table's own small grid
    [resources]                    # see Resources
    cpus_per_task = 1
    [wandb]
    mode = "off"

Every table is strict: an unknown key is an error that names it and the valid keys, and
every value is type-checked, so a typo never silently falls back to a default.

Overrides (``mnist-dist sweep FILE --set key=value``) change the file's tables without
copying it: ``epochs=2`` is ``defaults.epochs``; ``grid.seed=[0,1]``, ``resources.mem_gb=8``
and ``wandb.mode=offline`` name their table. A value is a TOML value; a bare word that is
not one (``step=step5``, ``mode=offline``) is a string. They are applied to the parsed
file before it is validated, so a bad override gets the same one-line error as a bad file.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

MAX_TRIALS = 10_000  # above this, `mnist-dist sweep` wants --yes
TOP_KEYS = ("name", "description", "grid", "defaults", "trials", "resources", "wandb")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # fullmatch: `$` passes a final newline
CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # a newline ends an #SBATCH line: the rest is shell
SET_TABLES = ("grid", "defaults", "resources", "wandb")  # what --set may name
BARE_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")  # --set step=step5: a string


@dataclass
class Resources:
    """What one trial asks of the scheduler. GPUs per trial = nodes x gpus_per_node."""

    partition: str | None = None  # None: the cluster's default partition
    time_min: int = 60  # wall-clock limit per job, minutes; a timed-out trial requeues
    nodes: int = 1
    gpus_per_node: int = 0  # 0: train on CPU
    tasks_per_node: int | None = None  # processes per node; None: one per GPU, else 1
    cpus_per_task: int = 2  # torch threads per process (SLURM_CPUS_PER_TASK)
    mem_gb: float = 4.0  # per node, GB
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int = 16  # trials of one array running at once
    signal_delay_s: int = 90  # SIGUSR2 this many seconds before the time limit
    max_num_timeout: int = 30  # times a timed-out trial is requeued (submitit's default: 3)
    pack_seeds: int = 1  # seeds of one config trained as one grouped net per job (train --seeds)
    sbatch_extra: dict[str, Any] = field(default_factory=dict)  # extra #SBATCH --key=value
    setup: list[str] = field(default_factory=list)  # shell lines before srun (module load ...)

    @property
    def tasks(self) -> int:
        """Processes per node: one per GPU (the Accelerate/DDP layout), else as given."""
        return self.tasks_per_node or max(1, self.gpus_per_node)

    @property
    def world_size(self) -> int:
        """Processes of one trial: part of its identity, since batch_size is per process."""
        return self.nodes * self.tasks


@dataclass
class Wandb:
    mode: str = "off"  # off | offline | online
    project: str = "mnist-dist"


@dataclass
class SweepSpec:
    name: str
    file: str
    description: str = ""
    grid: dict[str, list[Any]] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)
    resources: Resources = field(default_factory=Resources)
    wandb: Wandb = field(default_factory=Wandb)

    def size(self) -> int:
        """Trials before de-duplication, computed without expanding the product."""
        return math.prod(len(v) for v in self.grid.values()) * bool(self.grid) + len(self.trials)

    def expand(self) -> list[TrainConfig]:
        """Resolved configs: the grid's product in file order, then [[trials]]; one per id."""
        raw = [
            dict(zip(self.grid, combo, strict=True))
            for combo in itertools.product(*self.grid.values())
        ]
        raw = raw if self.grid else []
        configs: dict[str, TrainConfig] = {}
        for i, point in enumerate(raw + self.trials):
            where = f"grid point {point}" if i < len(raw) else f"trials[{i - len(raw)}]"
            try:
                point = {**self.defaults, **point, "world_size": self.resources.world_size}
                cfg = TrainConfig(**point).resolve()
            except UserError as e:
                raise UserError(f"{self.file}: {where}: {e}") from None
            configs.setdefault(cfg.trial_id(), cfg)  # equal configs are one trial
        return list(configs.values())


def _check_value(value: Any, hint: Any, where: str) -> Any:
    """Type-check one TOML value against a dataclass field's hint; ints widen to float."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        hint = next(a for a in args if a is not type(None))  # TOML has no null
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where} must be a list, got {value!r}")
        return [_check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a table, got {value!r}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # lr = 1 and lr = 1.0 must give one trial id
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise UserError(f"{where} must be {hint.__name__}, got {value!r}")
    return value


def _strict(cls: type, table: Any, where: str) -> dict[str, Any]:
    """Keys of a TOML table checked against a dataclass: names and types."""
    if not isinstance(table, dict):
        raise UserError(f"{where} must be a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key in table:
        if key not in hints:
            raise UserError(f"unknown key {key!r} in {where}; valid keys: {', '.join(known)}")
    return {k: _check_value(v, hints[k], f"{where}.{k}") for k, v in table.items()}


def _trial_points(table: Any, where: str) -> list[dict[str, Any]]:
    """One [[trials]] table -> its trials: a list value is a small grid of its own
    (``seed = [0, 1, 2]`` gives three trials of that table), in key order."""
    if not isinstance(table, dict):
        raise UserError(f"{where} must be a table, got {table!r}")
    lists = {k: v for k, v in table.items() if isinstance(v, list)}
    for key, values in lists.items():
        if not values:
            raise UserError(f"empty grid: {where}.{key} is an empty list")
    scalars = _train_fields({k: v for k, v in table.items() if k not in lists}, where)
    checked = {k: [_train_fields({k: v}, where)[k] for v in vs] for k, vs in lists.items()}
    return [
        {**scalars, **dict(zip(checked, combo, strict=True))}
        for combo in itertools.product(*checked.values())
    ]


def _train_fields(table: Any, where: str) -> dict[str, Any]:
    if isinstance(table, dict) and "world_size" in table:
        raise UserError(
            f"{where}: world_size comes from [resources] (nodes x tasks_per_node); remove it"
        )
    return _strict(TrainConfig, table, where)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``--set grid.seed=[0,1]`` -> (["grid", "seed"], [0, 1]); a bare key means defaults."""
    how = "write --set key=value (e.g. --set epochs=2 or --set 'grid.seed=[0,1]')"
    key, eq, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not eq or not key:
        raise UserError(f"--set {text!r} is not key=value; {how}")
    parts = key.split(".")
    if len(parts) == 1:
        parts = ["defaults", *parts]
    if parts[0] not in SET_TABLES or len(parts) != 2 or not all(parts):
        raise UserError(
            f"--set {text!r}: {key!r} is not KEY or TABLE.KEY with TABLE one of "
            f"{', '.join(SET_TABLES)} (a bare KEY means defaults.KEY)"
        )
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if not BARE_WORD.fullmatch(raw):
            raise UserError(
                f"--set {text!r}: {raw!r} is not a TOML value (a number, true/false, "
                '"text", [a, b] or a bare word); ' + how
            ) from None
        value = raw  # step=step5: the quotes TOML wants would need shell quoting
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The parsed sweep file with each ``--set`` applied in order (a new dict). The override
    wins: ``seed=3`` over a file with ``[grid] seed`` takes seed out of the grid, and
    ``grid.epochs=[1,2]`` takes epochs out of [defaults]."""
    data = dict(data)
    for text in overrides:
        (table, key), value = parse_override(text)
        other = {"grid": "defaults", "defaults": "grid"}.get(table)
        for name in filter(None, (table, other)):
            if not isinstance(data.get(name, {}), dict):
                raise UserError(f"--set {text!r}: [{name}] in the file is not a table")
        data[table] = {**data.get(table, {}), key: value}
        if other and key in data.get(other, {}):
            data[other] = {k: v for k, v in data[other].items() if k != key}
    return data


def read_job_file(path: Path, kind: str, top_keys: tuple[str, ...],
                  overrides: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """A sweep or tune file's TOML (``--set`` overrides applied), its top-level keys and
    its folder-safe ``name`` checked; every problem is a one-line ``UserError``."""
    if not path.is_file():
        raise UserError(f"{kind} file {str(path)!r} not found (see jobs/*.toml for examples)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: invalid TOML: {e}") from None
    data = apply_overrides(data, overrides or [])
    for key in data:
        if key not in top_keys:
            raise UserError(f"unknown key {key!r} in {path}; valid keys: {', '.join(top_keys)}")
    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UserError(f"{path}: name must be a folder-safe string (letters, digits, . _ -)")
    return data


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> SweepSpec:
    """Read and validate a sweep file, with ``--set`` overrides applied to its tables first;
    every problem is a one-line ``UserError``."""
    path = Path(path)
    data = read_job_file(path, "sweep", TOP_KEYS, overrides)
    name = data["name"]
    grid_where, defaults_where = f"{path} [grid]", f"{path} [defaults]"
    grid_raw = data.get("grid", {})
    if not isinstance(grid_raw, dict):
        raise UserError(f"{grid_where} must be a table of lists")
    grid: dict[str, list[Any]] = {}
    for key, values in grid_raw.items():
        if not isinstance(values, list):
            raise UserError(
                f"{grid_where}.{key} must be a list, got {values!r}; scalars go in [defaults]"
            )
        if not values:
            raise UserError(f"empty grid: {grid_where}.{key} is an empty list")
        grid[key] = [_train_fields({key: v}, f"{grid_where}")[key] for v in values]
    defaults = _train_fields(data.get("defaults", {}), defaults_where)
    both = sorted(set(grid) & set(defaults))
    if both:
        raise UserError(f"{path}: key {both[0]!r} is in both [grid] and [defaults]; keep one")
    trials = data.get("trials", [])
    if not isinstance(trials, list):
        raise UserError(f"{path}: trials must be an array of tables ([[trials]])")
    trials = [
        t for i, table in enumerate(trials) for t in _trial_points(table, f"{path} trials[{i}]")
    ]
    resources = Resources(**_strict(Resources, data.get("resources", {}), f"{path} [resources]"))
    wandb = Wandb(**_strict(Wandb, data.get("wandb", {}), f"{path} [wandb]"))
    spec = SweepSpec(
        name=name,
        file=str(path),
        description=str(data.get("description", "")),
        grid=grid,
        defaults=defaults,
        trials=trials,
        resources=resources,
        wandb=wandb,
    )
    check_resources(spec.resources, f"{path} [resources]")
    if spec.wandb.mode not in ("off", "offline", "online"):
        raise UserError(f"{spec.file} [wandb].mode must be off, offline or online")
    if spec.size() == 0:
        raise UserError(f"empty grid: {path} has no [grid] lists and no [[trials]]")
    return spec


def check_resources(r: Resources, where: str) -> None:
    """[resources] values that make no sense, or would break the batch script: one line."""
    keys = ("time_min", "nodes", "cpus_per_task", "array_parallelism", "max_num_timeout")
    for key in keys + ("pack_seeds",):
        if getattr(r, key) < 1:
            raise UserError(f"{where}.{key} must be at least 1, got {getattr(r, key)}")
    if r.gpus_per_node < 0 or not 0 < r.mem_gb < math.inf or r.signal_delay_s < 0:
        raise UserError(f"{where}: gpus_per_node, mem_gb and signal_delay_s must be positive")
    # Values written into the batch script: one line each, or the rest would run as shell.
    texts = {key: getattr(r, key) for key in ("partition", "account", "qos", "constraint")}
    texts.update({f"sbatch_extra key {k!r}": k for k in r.sbatch_extra})
    texts.update({f"sbatch_extra.{k}": v for k, v in r.sbatch_extra.items()})
    texts.update({f"setup[{i}]": line for i, line in enumerate(r.setup)})
    for key, value in texts.items():
        if isinstance(value, str) and CONTROL.search(value):
            raise UserError(
                f"{where}.{key} holds a newline or control character ({value!r}); "
                "each value goes on one #SBATCH or setup line: remove it"
            )
    if r.tasks_per_node is not None and r.tasks_per_node < 1:
        raise UserError(f"{where}.tasks_per_node must be at least 1, got {r.tasks_per_node}")
    if r.gpus_per_node and r.tasks_per_node not in (None, r.gpus_per_node):
        raise UserError(
            f"{where}: tasks_per_node ({r.tasks_per_node}) must equal gpus_per_node "
            f"({r.gpus_per_node}): one process per GPU"
        )
