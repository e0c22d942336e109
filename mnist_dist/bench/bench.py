"""Time the origin pipeline, our trainer's step and pure compute, side by side.

    mnist-dist bench --step step4 --json
    mnist-dist bench --step step4 --batch-size 64 --iters 100 --repeats 5
    mnist-dist bench --time-to-target --step step4 --seed 0 --out runs/bench/ttt-s4
    mnist-dist bench --time-to-target --result runs/s4/result.json   # bench/ttt.py
    mnist-dist bench --variants --compile --iters 100 --repeats 5
    mnist-dist bench --table results/bench/raw/cpu-step*.json   # any --json runs, reprinted
    mnist-dist bench --all-steps --json     # every step: origin, fp32, bf16 (bench/steps.py)
    mnist-dist bench --pack 4,8,16 --step step5  # packs vs separate runs (bench/pack.py)

One run builds the same model at the same batch size three times and times:

(a) origin:  torchvision PIL transforms per sample in a DataLoader (2 workers, shuffle),
             then a plain PyTorch step in NCHW, fp32, as the origin study trained;
(b) ours:    ``TrainBatches`` (on-device gather + one affine warp per batch) feeding the
             same step as the trainer (``training.loop``): Accelerate, channels_last, SGD momentum;
(c) compute: (b)'s step on one fixed batch, so (b) - (c) is the data pipeline's cost.

Each is warmed up (worker start, torch.compile, allocator), then timed for ``--iters``
optimizer updates (``--steps``, its old name, still works; the JSON keeps ``steps`` and
``ms_per_step``; a "step" is otherwise always a registered model). ``--repeats`` rounds
interleave a, b, c so that load from other processes hits all three alike, and the median
round is reported. On CUDA the clock reads after a
``torch.cuda.synchronize()``; the hot loops themselves never sync.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import torch

from ..config import MIXED_PRECISION, RECIPES, TARGET_ACC, TrainConfig
from ..data import TrainBatches, load_mnist
from ..errors import ArgumentParser, UserError, cli_errors
from ..training.runinfo import contention_lines, cpu_threads, load_avg, machine_facts
from .timing import ITERS, forever, measure, origin_loader, origin_loop, our_loop


def run_bench(args) -> dict:
    """(a), (b), (c) and their ratios; with ``--variants``, (c) per memory format instead."""
    from accelerate import Accelerator

    cfg = TrainConfig(step=args.step, batch_size=args.batch_size).resolve()
    if args.mixed_precision == "fp16" and (args.cpu or not torch.cuda.is_available()):
        raise UserError("--mixed-precision fp16 needs a CUDA GPU; on CPU use bf16 or no")
    threads = args.threads or cpu_threads()
    torch.set_num_threads(threads)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision, cpu=args.cpu or not torch.cuda.is_available()
    )
    device, bs = accelerator.device, cfg.batch_size
    load_before = load_avg()
    data = load_mnist(args.data_dir, download=False).to(device)
    ours = TrainBatches(data.train_x, data.train_y, bs, seed=0)
    if args.variants:  # compute alone: eager (and compiled) x NCHW and channels_last
        first = next(ours.epoch(0))
        loops = {
            f"{'compile' if c else 'eager'} {'channels_last' if cl else 'nchw'}": our_loop(
                cfg.step, accelerator, iter([first]), cfg.lr, cl, c, fixed=True
            )
            for c in ((False, True) if args.compile else (False,))
            for cl in (False, True)
        }
    else:
        loader = origin_loader(args.data_dir, bs, args.workers, pin=device.type == "cuda")
        mk = dict(lr=cfg.lr, channels_last=args.channels_last, compile_=args.compile)
        loops = {
            "origin": origin_loop(cfg.step, loader, device, cfg.lr),
            "ours": our_loop(cfg.step, accelerator, forever(ours.epoch), **mk),
            "compute": our_loop(cfg.step, accelerator, ours.epoch(0), fixed=True, **mk),
        }
    res = measure(loops, device, args.iters, args.warmup, args.repeats)
    n_train = len(data.train_x)
    for r in res.values():  # one pass over the training set at this rate, seconds
        r["epoch_seconds"] = n_train / r["images_per_s"]
    if args.variants:
        res = dict(variants=res)
    else:
        a, b, c = (res[k]["ms_per_step"] for k in ("origin", "ours", "compute"))
        res.update(speedup=a / b, data_overhead=(b - c) / c)
    return dict(
        **res,
        step=cfg.step,
        batch_size=bs,
        threads=threads,
        origin_workers=args.workers,
        origin_setup="PIL transforms, DataLoader, plain PyTorch, NCHW, fp32, no compile",
        channels_last=args.channels_last,
        compile=args.compile,
        mixed_precision=args.mixed_precision,
        steps=args.iters,
        warmup=args.warmup,
        repeats=args.repeats,
        train_images=n_train,
        **machine_facts(device, load_before),
    )


def print_bench(r: dict) -> None:
    print(
        f"bench {r['step']}, batch {r['batch_size']}, {r['device']}, {r['threads']} threads, "
        f"{r['steps']} updates x {r['repeats']} rounds (median), warm-up {r['warmup']}"
    )
    print("\n".join(contention_lines(r)))
    print(f"{'':12} {'ms/step':>8} {'images/s':>9} {'epoch s':>8}")
    notes = dict(
        origin=f"PIL per sample, DataLoader {r['origin_workers']} workers, NCHW fp32",
        ours=f"TrainBatches, channels_last={r['channels_last']}, compile={r['compile']}",
        compute="one fixed batch: forward, backward, SGD step",
    )
    for name, note in notes.items():
        m = r[name]
        print(
            f"{name:12} {m['ms_per_step']:8.2f} {m['images_per_s']:9,.0f} "
            f"{m['epoch_seconds']:8.1f}  {note}"
        )
    print(
        f"speedup b/a {r['speedup']:.2f}x   data overhead (b-c)/c {100 * r['data_overhead']:.1f}%"
    )


def print_variants(r: dict) -> None:
    print(f"compute alone, {r['step']}, batch {r['batch_size']}")
    print("\n".join(contention_lines(r)))
    for name, m in r["variants"].items():
        print(f"{name:24} {m['ms_per_step']:8.2f} ms/step  rounds {m['rounds_ms']}")


def print_tables(paths: list[str]) -> None:
    """``--table``: what each saved ``--json`` run prints. An ``--all-steps`` or ``--pack``
    run prints its own header and table; single-step runs share one table, a row each.
    Nothing is printed unless every file renders (a bad one is a one-line error)."""
    from .pack import print_packs
    from .steps import print_all

    printers = {"all-steps": print_all, "pack-layouts": print_packs}
    out, single = io.StringIO(), []
    for path in paths:
        r = _checked(path, lambda p: json.loads(Path(p).read_text()), path)
        mode = r.get("mode") if isinstance(r, dict) else None
        if mode in printers:
            with contextlib.redirect_stdout(out):
                _checked(path, printers[mode], r)
            out.write("\n")
        else:
            single.append((path, r))
    if single:
        out.write(markdown_table(single) + "\n")
    print(out.getvalue(), end="")


def _checked(path: str, render: Callable, *args):
    try:
        return render(*args)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        why = f"no {e}" if isinstance(e, KeyError) else str(e)
        raise UserError(f"--table {path}: not a `mnist-dist bench --json` output ({why})") from None


def markdown_table(runs: list[tuple[str, dict]]) -> str:
    """The README table of single-step runs: one row per ``--json`` output file."""
    head = (
        "| step | batch | origin img/s | origin epoch s | ours img/s | ours epoch s | speedup "
        "| compute img/s | data overhead | device, threads | load avg |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for path, r in runs:
        rows.append(_checked(path, _single_row, r))
    return "\n".join(rows)


def _single_row(r: dict) -> str:
    o, b, c = r["origin"], r["ours"], r["compute"]
    return (
        f"| {r['step']} | {r['batch_size']} | {o['images_per_s']:,.0f} "
        f"| {o['epoch_seconds']:.1f} | {b['images_per_s']:,.0f} | {b['epoch_seconds']:.1f} "
        f"| {r['speedup']:.2f}x | {c['images_per_s']:,.0f} "
        f"| {100 * r['data_overhead']:+.1f}% | {r['device']}, {r['threads']} "
        f"| {r.get('load_avg') or [r['load_avg_before'][0], r['load_avg_after'][0]]} |"
    )


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = ArgumentParser(prog=prog, description="Time origin pipeline vs ours vs pure compute.")
    add = p.add_argument
    add("--step", default="step4", help="registered model, see `mnist-dist models`")
    add("--batch-size", type=int, help="default: the step's recipe (64 for step3/4)")
    add("--iters", "--steps", type=int, dest="iters",
        help=f"timed optimizer updates per round (default {ITERS}; --steps: old name)")  # fmt: skip
    add("--warmup", type=int, default=5, help="untimed updates before each round")
    add("--repeats", type=int, default=3, help="rounds; the median is reported")
    add("--workers", type=int, default=2, help="origin DataLoader workers")
    add("--threads", type=int, help="torch threads (default: all cores); --pack: W, default 2")
    add("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    add("--compile", action="store_true", help="torch.compile ours and compute")
    add("--mixed-precision", default="no", choices=MIXED_PRECISION, help="ours and compute")
    add("--cpu", action="store_true", help="run on CPU even when a GPU is present")
    add("--data-dir", help="folder holding MNIST/raw (default: $MNIST_DATA_DIR, then cache)")
    add("--json", action="store_true", help="print one JSON object")
    add("--variants", action="store_true", help="compute only: NCHW vs channels_last")
    add("--table", nargs="+", metavar="JSON", help="print the tables of saved --json runs")
    add("--all-steps", action="store_true", help="every step: origin vs fp32 vs bf16, interleaved")
    add("--step-list", metavar="A,B", help="as --all-steps, for these steps (e.g. step3,step4)")
    add("--pack", metavar="N,N", help="e.g. 4,8,16: seed packs vs separate runs (bench/pack.py)")
    add("--window", type=float, help="--pack: seconds timed per layout and round (default 5)")
    add("--time-to-target", action="store_true", help=f"train a recipe, time to {TARGET_ACC}%%")
    add("--seed", type=int, default=0, help="time-to-target: training seed")
    add("--epochs", type=int, help="time-to-target: default the step's recipe")
    add("--out", help="time-to-target: run folder (default runs/bench/time-to-target/<id>)")
    add("--result", help="time-to-target: read this result.json instead of training")
    return p


@cli_errors
def bench_main(
    argv: list[str] | None = None, prog: str = "python -m mnist_dist.bench.bench"
) -> None:
    args = build_parser(prog).parse_args(argv)
    if args.step not in RECIPES:
        TrainConfig(step=args.step).resolve()  # raises the one-line unknown-step error
    for flag, low in (("iters", 1), ("warmup", 0), ("repeats", 1), ("workers", 0)):
        if getattr(args, flag) is not None and getattr(args, flag) < low:
            raise UserError(f"--{flag} must be at least {low}, got {getattr(args, flag)}")
    for flag in ("threads", "batch_size"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            name = "--" + flag.replace("_", "-")
            raise UserError(f"{name} must be at least 1, got {getattr(args, flag)}")
    if args.pack is None and args.window is not None:
        raise UserError("--window goes with --pack (the seconds timed per layout)")
    if args.pack is None and args.iters is None:
        args.iters = ITERS
    if args.pack is not None:
        from .pack import print_packs, run_packs

        r, show = run_packs(args), print_packs
    elif args.all_steps or args.step_list is not None:
        from .steps import print_all, run_all

        r, show = run_all(args), print_all
    elif args.table:
        return print_tables(args.table)
    elif args.time_to_target:
        from .ttt import print_ttt, run_time_to_target

        r, show = run_time_to_target(args), print_ttt
    else:
        r, show = run_bench(args), print_variants if args.variants else print_bench
    print(json.dumps(r, indent=2)) if args.json else show(r)


main = bench_main
