"""``mnist-dist tune DIR --promote RANK --name stepN``: a searched trial becomes a step;
``--revalidate K``: the K best trials become a sweep on fresh validation seeds.

Registration lives in ``mnist_dist/steps.toml`` (``config.STEPS_FILE``; the variable
``MNIST_DIST_STEPS_FILE`` points elsewhere): a table per promoted step naming the
registered model it builds (``family`` for a searched shape) and its whole recipe.
``config`` reads it into ``RECIPES``, ``models`` into ``MODELS``; hand-written steps stay
Python code in ``models.py`` and ``config.py``. Promotion also writes the step's
pre-registered test sweep, ``jobs/<name>_test.toml``: ``--test-seeds`` (default 100-119,
apart from the search's seeds), the full training set,
the test set read once after the final epoch. Its trial ids are the new step's own.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..config import BASE_RECIPE, PROMOTED, RECIPES, SHAPE, STEPS_FILE, TrainConfig
from ..errors import UserError
from ..fsio import write_text
from . import study as st
from .spec import load_tune

NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
# What a recipe holds: the origin base, the step's own knobs and the family's shape.
RECIPE_KEYS = (*BASE_RECIPE, "epochs", "batch_size", "lr", "lr_step", "lr_gamma", "final_lr",
               *SHAPE)  # fmt: skip


def promote(out: Path, rank: int, name: str | None, jobs: Path, seeds: list[int]) -> None:
    if not name or not NAME_RE.fullmatch(name):
        raise UserError(f"--name {name!r}: give the new step a name like step8 (lower case "
                        "letters, digits, _)")  # fmt: skip
    if name in RECIPES:
        raise UserError(f"--name {name}: a step of that name is registered; choose another")
    spec, ranked = ranked_trials(out, ("--promote", rank), ("--test-seeds", seeds))
    trial = ranked[rank - 1]
    sweep = jobs / f"{name}_test.toml"
    if sweep.exists():
        raise UserError(f"{sweep} exists: a pre-registered sweep is never overwritten; choose "
                        "another --name")  # fmt: skip
    # As the trial's runs were built: a [fixed] knob of the other scheduler is dropped.
    cfg = spec.sample(lambda d: trial.params[d.name], seed=0)
    recipe = {k: getattr(cfg, k) for k in RECIPE_KEYS if getattr(cfg, k) is not None}
    model = PROMOTED[cfg.step]["model"] if cfg.step in PROMOTED else cfg.step
    source = f"{out} trial {trial.number} (rank {rank} of {len(ranked)})"
    accs = ", ".join(f"{a:.2f}" for a in trial.user_attrs.get("val_accs", []))
    description = (f"tuned: {trial.user_attrs.get('params', 0):,} params, validation "
                   f"{trial.value:.2f}% mean ({accs})")  # fmt: skip
    table = toml_table(name, dict(model=model, description=description, source=source), recipe)
    text = STEPS_FILE.read_text() if STEPS_FILE.is_file() else ""
    write_text(STEPS_FILE, text.rstrip("\n") + "\n\n" + table)
    write_text(sweep, test_sweep(name, cfg, spec, source, seeds))
    print(f"registered {name} ({model}, {description}) in {STEPS_FILE}")
    print(f"its test sweep: {sweep}; the final evidence is one command:")
    print(f"  mnist-dist sweep {sweep} --cluster slurm --out results/{name}")


def ranked_trials(out: Path, rank: tuple[str, int], seeds: tuple[str, list[int]]):
    """(spec, complete feasible trials best first) of the tune folder ``out``; a one-line
    error when the flag's rank is not among them or a new seed is one of the search's."""
    spec = load_tune(out / st.SPEC)
    study, _ = st.load_study(out, spec, st.read_record(out))
    ranked = st.best_trials(study)
    (flag, k), (seed_flag, new) = rank, seeds
    if not 1 <= k <= len(ranked):
        raise UserError(f"{flag} {k}: {out} ranks {len(ranked)} complete trials; give 1 to "
                        f"{len(ranked)} (see `mnist-dist report {out}`)")  # fmt: skip
    overlap = sorted(set(new) & set(spec.seeds))
    if overlap:
        raise UserError(f"{seed_flag}: {overlap[0]} is a search seed; its seeds must be apart "
                        f"from {spec.seeds}")  # fmt: skip
    return spec, ranked


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are TOML's


def toml_table(name: str, head: dict[str, Any], recipe: dict[str, Any]) -> str:
    lines = [
        f"[{name}]",
        *(f"{k} = {toml_value(v)}" for k, v in head.items()),
        "",
        f"[{name}.recipe]",
        *(f"{k} = {toml_value(v)}" for k, v in recipe.items()),
    ]
    return "\n".join(lines) + "\n"


def test_sweep(name: str, cfg: TrainConfig, spec, source: str, seeds: list[int]) -> str:
    """The step's test evidence, fixed before it is run: ``seeds``, the full training set
    (no val_split, no train_limit), the test set scored once, after the final epoch."""
    res = spec.resources
    defaults = {"test_eval": "final"}
    if cfg.mixed_precision != "no":
        defaults["mixed_precision"] = cfg.mixed_precision
    lines = [
        f"# The pre-registered test evidence of {name}, promoted from {source}.",
        "# Written by `mnist-dist tune --promote` before any test figure exists: the seeds",
        "# below, apart from the search's, the full training set, the test set read once,",
        "# after the final epoch.",
        "#",
        f"#     mnist-dist sweep jobs/{name}_test.toml --cluster slurm --out results/{name}",
        f"#     mnist-dist report results/{name}",
        "",
        f'name = "{name}-test"',
        f'description = "{name}: final-epoch test accuracy over {len(seeds)} seeds"',
        "",
        "[defaults]",
        *(f"{k} = {toml_value(v)}" for k, v in defaults.items()),
        "",
        "[grid]",
        f'step = ["{name}"]',
        f"seed = {seeds}",
        "",
        "[resources]",
        *resource_lines(res),
    ]
    return "\n".join(lines) + "\n"


def resource_lines(res) -> list[str]:
    """The tune's [resources] a written sweep keeps: its jobs' time, cores, memory, GPUs."""
    lines = [f"time_min = {res.time_min}", f"cpus_per_task = {res.cpus_per_task}",
             f"mem_gb = {res.mem_gb}", f"gpus_per_node = {res.gpus_per_node}"]  # fmt: skip
    if res.partition:
        lines.append(f"partition = {toml_value(res.partition)}")
    return lines


def revalidate(out: Path, k: int, jobs: Path, seeds: list[int]) -> None:
    """Write ``jobs/<tune name>_revalidate.toml``: the ``k`` best trials' configs, each on
    ``seeds`` (apart from the search's), on the tune's validation split, the test set never
    read. The best of many configs on a few seeds is biased upward: this sweep, reported
    with ``--compare``, is what a pick rests on."""
    spec, ranked = ranked_trials(out, ("--revalidate", k), ("--val-seeds", seeds))
    sweep = jobs / f"{spec.name}_revalidate.toml"
    if sweep.exists():
        raise UserError(f"{sweep} exists: a sweep is never overwritten; move it away first")
    lines = [
        f"# The {k} best trials of {out}, trained again on fresh validation seeds {seeds}",
        "# (the search's were " + f"{spec.seeds}). Written by `mnist-dist tune --revalidate`.",
        "#",
        f"#     mnist-dist sweep {sweep} --out {out}/revalidate",
        f"#     mnist-dist report {out}/revalidate --metric final_val_acc --compare",
        "",
        f'name = "{spec.name}-revalidate"',
        f'description = "{spec.name}: its {k} best trials on validation seeds {seeds}"',
    ]
    for rank, t in enumerate(ranked[:k], 1):
        lines += ["", f"# rank {rank}: trial {t.number}, {t.value:.3f}% on seeds {spec.seeds}",
                  "[[trials]]", f"seed = {seeds}"]  # fmt: skip
        lines += [f"{n} = {toml_value(v)}" for n, v in spec.fields(t.params).items()]
    lines += ["", "[resources]", f"pack_seeds = {len(seeds) if spec.packed else 1}",
              *resource_lines(spec.resources)]  # fmt: skip
    write_text(sweep, "\n".join(lines) + "\n")
    print(f"{sweep}: the {k} best trials of {out} on validation seeds {seeds}; run it with")
    print(f"  mnist-dist sweep {sweep} --out {out}/revalidate")
