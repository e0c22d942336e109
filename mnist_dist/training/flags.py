"""``mnist-dist train``'s flags, built from the ``TrainConfig`` fields: defaults live there.

Every TrainConfig field is a flag (``--batch-size`` for ``batch_size``) with the field's help
text; a field whose default is ``None`` takes the step's recipe, and ``--help`` says so.
Runtime flags (where to write, W&B, resume) follow. The launcher's settings are read here
and only here: ``ACCELERATE_MIXED_PRECISION`` (``accelerate launch --mixed_precision``) and
``WORLD_SIZE`` (torchrun, accelerate launch), so that ``TrainConfig.resolve`` stays pure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing

from ..config import SEED_MAX, Runtime, TrainConfig
from ..errors import ArgumentParser, UserError

RECIPE = "the step's recipe"


def _flag_type(hint: typing.Any) -> type:
    """int | None -> int; the field's scalar type, for argparse."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def build_parser(prog: str = "mnist-dist train") -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=prog,
        description="Train one step model. Recipe flags default to the step's own recipe "
        "(see `mnist-dist models`); --print-config shows the resolved config.",
    )
    hints, defaults = typing.get_type_hints(TrainConfig), TrainConfig()
    recipe = p.add_argument_group("what the run computes (part of its trial id)")
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        if meta.get("cli") is False:
            continue
        flag, default, kind = "--" + f.name.replace("_", "-"), getattr(defaults, f.name), None
        shown = meta.get("unset", RECIPE) if default is None else default
        kw: dict[str, typing.Any] = dict(default=default, help=f"{meta['help']} (default: {shown})")
        kind = _flag_type(hints[f.name])
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = kind
            kw.update({k: meta[k] for k in ("choices", "metavar") if k in meta})
        recipe.add_argument(flag, **kw)
    run = p.add_argument_group("how it runs (not in the trial id)")
    add = run.add_argument
    add("--data-dir", help="folder holding MNIST/raw (default: $MNIST_DATA_DIR, then cache)")
    add("--no-download", dest="download", action="store_false", help="never fetch MNIST")
    add("--out", help="run folder (default: runs/<trial id>)")
    add("--resume", action="store_true", help="continue from the last saved epoch in --out")
    add("--cpu", action="store_true", help="run on CPU even when a GPU is present")
    threads = "torch threads (default: what SLURM or the launcher grants)"
    add("--threads", type=int, metavar="N", help=threads)
    add("--wandb", default="off", choices=("off", "offline", "online"), help="(default: off)")
    add("--wandb-project", default="mnist-dist", help="(default: mnist-dist)")
    add("--wandb-group", help="W&B group (default: the config's label, e.g. step4)")
    add("--no-progress", dest="progress", action="store_false", help="no progress output")
    add("--print-config", action="store_true", help="print the resolved config and exit")
    add("--seeds", metavar="LIST", help="train these seeds at once, packed as one grouped "
        "network (0-7 or 0,3,5); --out is then their parent folder (default: runs)")  # fmt: skip
    return p


def parse_args(argv: list[str] | None, prog: str = "mnist-dist train"):
    """argv -> (TrainConfig, Runtime); with --print-config, prints and exits 0."""
    parser = build_parser(prog)
    # `accelerate launch --mixed_precision bf16` (or its config file) says so in the env.
    parser.set_defaults(mixed_precision=os.environ.get("ACCELERATE_MIXED_PRECISION", "no"))
    args = vars(parser.parse_args(argv))
    cfg_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    world = os.environ.get("WORLD_SIZE", "1")
    cfg = TrainConfig(
        **{k: v for k, v in args.items() if k in cfg_keys},
        world_size=int(world) if world.isdigit() else 1,
    )
    if args.pop("print_config"):
        print(json.dumps(cfg.resolve().to_dict(), indent=2))
        raise SystemExit(0)
    if args["seeds"] is not None:
        if any(a == "--seed" or a.startswith("--seed=") for a in argv or sys.argv[1:]):
            raise UserError("give --seed N or --seeds LIST, not both")
        args["seeds"] = parse_seeds(args["seeds"])
    rt = Runtime(**{k: v for k, v in args.items() if k not in cfg_keys})
    rt.float64 = os.environ.get("MNIST_DIST_TEST_FLOAT64") == "1"  # equivalence tests only
    return cfg, rt


MAX_PACK = 10_000  # seeds in one --seeds pack: far above what fits one process


def parse_seeds(text: str, flag: str = "--seeds") -> list[int]:
    """``0-7``, ``0,3,5`` or ``0-3,9`` -> sorted distinct seeds; a one-line error otherwise."""
    seeds: set[int] = set()
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()) or (dash and int(hi) < int(lo)):
            raise UserError(f"{flag} {text!r}: give seeds like 0-7 or 0,3,5")
        if int(hi if dash else lo) > SEED_MAX:
            raise UserError(f"{flag} {text!r}: seeds must be in [0, {SEED_MAX}] (numpy's range)")
        if dash and int(hi) - int(lo) >= MAX_PACK:
            raise UserError(f"{flag} {text!r}: a pack holds at most {MAX_PACK:,} seeds")
        seeds.update(range(int(lo), int(hi if dash else lo) + 1))
    return sorted(seeds)
