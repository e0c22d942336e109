"""``mnist-dist bench --pack 4,8,16``: separate runs vs seed packs, side by side on the CPU.

    mnist-dist bench --pack 4,8,16 --step step5 --json > results/bench/raw/pack-step5.json
    mnist-dist bench --pack 4,8,16 --step-list step2,step3,step4,step5 --window 10 --repeats 5

Which way of spending W cores (``--threads W``, default 2) trains the most seed-images per
second? For each step (``--step``, ``--step-list`` or ``--all-steps``), in fp32 and in bf16,
one run times these layouts, ``PxT`` meaning P processes side by side, T torch threads each:

    separate Wx1, separate 1xW   the trainer's update (``training.updates.seed_update``)
                                 on one seed's own batches, in each process
    packN Wx1, packN 1xW         the packed trainer's update (``training.updates.pack_update``)
                                 on a grouped network of N seeds, fed as ``train --seeds``
                                 feeds it, in each process

The processes are ``bench/worker.py``, started once and kept warm: per layout and round,
each taking part runs ``--warmup`` untimed steps, then all of them train until one shared
wall-clock deadline ``--window`` seconds ahead (at least one step each). A layout's figure
is the sum over its processes of each one's seed-images / seconds (a pack's step trains
batch x N seed-images). Every round times every layout in turn, so that other load hits
each alike; the median round is reported. The JSON records the CPU model, the cores, the
load average (1, 5, 15 min) before and after, and, per layout, what was timed (the step
function and the convolutions' ``groups``) and the dtype the first convolution computed in.
Runs on the CPU even where a GPU is present: the layouts are CPU threads.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..config import TrainConfig
from ..errors import UserError
from ..training.runinfo import contention_lines, load_avg, machine_facts
from .steps import step_list

PRECISIONS = ("fp32", "bf16")
WIDTH = 2  # default --threads: 2 processes x 1 thread against 1 process x 2 threads
WINDOW_S = 5.0  # default --window


def parse_packs(text: str) -> list[int]:
    """``--pack 4,8,16``: seeds per pack, each at least 1, in the order given."""
    sizes = []
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise UserError("--pack names no pack sizes; give seeds per pack, e.g. --pack 4,8,16")
    for part in parts:
        try:
            n = int(part)
        except ValueError:
            raise UserError(
                f"--pack takes whole numbers of seeds, e.g. --pack 4,8,16; got {part!r}"
            ) from None
        if n < 1:
            raise UserError(f"--pack sizes must be at least 1 seed, got {n}")
        sizes.append(n)
    return list(dict.fromkeys(sizes))


def check_args(args) -> tuple[list[int], list[str], int, float]:
    """(pack sizes, steps, width W, window seconds), or a one-line error."""
    for flag in ("variants", "time_to_target", "table", "compile"):
        if getattr(args, flag):
            name = "--" + flag.replace("_", "-")
            raise UserError(f"{name} does not go with --pack; run it apart")
    if args.mixed_precision != "no":
        raise UserError("--pack times fp32 and bf16 side by side; leave out --mixed-precision")
    if args.iters is not None:
        raise UserError("--pack times a wall-clock --window (seconds) per layout, not --iters")
    window = WINDOW_S if args.window is None else args.window
    if not (math.isfinite(window) and window > 0):
        raise UserError(f"--window must be a positive number of seconds, got {args.window}")
    width = args.threads or WIDTH
    if width < 2:
        raise UserError(
            f"--pack compares W processes x 1 thread with 1 process x W threads (--threads W, "
            f"default {WIDTH}); W must be at least 2, got {width}"
        )
    packs = parse_packs(args.pack)
    if args.all_steps or args.step_list is not None:
        steps = step_list(args.all_steps, args.step_list)
    else:
        steps = [args.step]
    return packs, steps, width, window


def layouts(packs: list[int], width: int) -> list[tuple[str, int, int, int]]:
    """(name, pack size or 0 for separate runs, processes, threads each), in timing order."""
    out = []
    for name, pack in [("separate", 0)] + [(f"pack{n}", n) for n in packs]:
        out += [(f"{name} {width}x1", pack, width, 1), (f"{name} 1x{width}", pack, 1, width)]
    return out


class Workers:
    """``count`` bench/worker.py processes; ``ask`` sends commands and reads one reply each."""

    def __init__(self, count: int):
        root = str(Path(__file__).resolve().parents[1])  # this package, installed or not
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", "mnist_dist.bench.worker"]
        self.procs: list[subprocess.Popen] = []
        for _ in range(count):
            self.procs.append(subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                env=dict(os.environ, PYTHONPATH=path),
            ))  # fmt: skip

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:  # end of input: each worker exits
            try:
                p.stdin.close()
            except OSError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def ask(self, msgs: dict[int, dict]) -> dict[int, dict]:
        """Send each worker its command, all before reading any reply, then read them."""
        for i, msg in msgs.items():
            try:
                self.procs[i].stdin.write(json.dumps(msg) + "\n")
                self.procs[i].stdin.flush()
            except BrokenPipeError:
                raise UserError(f"bench worker {i} has stopped; see its messages above") from None
        replies = {}
        for i in msgs:
            line = self.procs[i].stdout.readline()
            if not line:
                code = self.procs[i].wait()
                raise UserError(f"bench worker {i} stopped (exit {code}); see its messages above")
            replies[i] = json.loads(line)
            if "error" in replies[i]:
                raise UserError(replies[i]["error"])
        return replies


def run_packs(args) -> dict:
    """Time every layout of every step and precision, interleaved; the JSON-ready result."""
    packs, steps, width, window = check_args(args)
    lays = layouts(packs, width)
    cells = [(s, p, *lay) for s in steps for p in PRECISIONS for lay in lays]
    timed: dict[tuple, list[list[dict]]] = {(s, p, name): [] for s, p, name, *_ in cells}
    facts: dict[tuple, dict] = {}
    load_before = load_avg()
    with Workers(width) as workers:
        init = dict(op="init", data_dir=args.data_dir, batch_size=args.batch_size,
                    channels_last=args.channels_last)  # fmt: skip
        workers.ask({i: dict(init, index=i) for i in range(width)})
        for _ in range(args.repeats):
            for step, precision, name, pack, procs, threads in cells:
                warm = dict(op="warm", step=step, precision=precision, pack=pack,
                            threads=threads, warmup=args.warmup)  # fmt: skip
                facts[step, precision, name] = workers.ask({i: warm for i in range(procs)})[0]
                until = time.monotonic() + window  # one deadline for the processes side by side
                replies = workers.ask({i: dict(op="run", until=until) for i in range(procs)})
                timed[step, precision, name].append(list(replies.values()))
    machine = machine_facts(torch.device("cpu"), load_before)
    rows = []
    for step in steps:
        batch = TrainConfig(step=step, batch_size=args.batch_size).resolve().batch_size
        for precision in PRECISIONS:
            cols = {}
            for name, pack, procs, threads in lays:
                cols[name] = dict(processes=procs, threads=threads, pack=pack or None,
                                  seeds_side_by_side=procs * max(pack, 1),
                                  **summary(timed[step, precision, name]),
                                  **facts[step, precision, name])  # fmt: skip
            base = cols[f"separate {width}x1"]["seed_images_per_s"]
            for col in cols.values():
                col["vs_separate"] = col["seed_images_per_s"] / base
            best = max(cols, key=lambda k: cols[k]["seed_images_per_s"])
            rows.append(dict(step=step, batch_size=batch, precision=precision, best=best,
                             layouts=cols))  # fmt: skip
    return dict(
        mode="pack-layouts",
        packs=packs,
        width=width,
        layouts=[name for name, *_ in lays],
        rows=rows,
        figure="seed-images per second, summed over the processes side by side",
        vs_separate=f"a layout's figure / separate {width}x1's",
        **machine,
        window_s=window,
        warmup=args.warmup,
        repeats=args.repeats,
        channels_last=args.channels_last,
    )


def summary(rounds: list[list[dict]]) -> dict:
    """One layout's rounds (per round, each process's images, steps, seconds)."""
    sums = [sum(p["images"] / p["seconds"] for p in r) for r in rounds]
    ms = [statistics.mean(1000.0 * p["seconds"] / p["steps"] for p in r) for r in rounds]
    return dict(
        seed_images_per_s=statistics.median(sums),
        rounds=[round(s, 1) for s in sums],
        ms_per_step=statistics.median(ms),  # per process, mean over the processes
        steps=[sum(p["steps"] for p in r) for r in rounds],  # timed, all processes together
    )


def markdown(r: dict) -> str:
    """The Markdown table: one row per step and precision, seed-images/s per layout."""
    head = ["step", "batch", "precision", *r["layouts"], f"best (vs separate {r['width']}x1)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in r["rows"]:
        cells = [row["step"], str(row["batch_size"]), row["precision"]]
        cells += [f"{row['layouts'][k]['seed_images_per_s']:,.0f}" for k in r["layouts"]]
        cells.append(f"{row['best']} ({row['layouts'][row['best']]['vs_separate']:.2f}x)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_packs(r: dict) -> None:
    print(
        f"bench --pack on cpu ({r['cpu_model']}), {r['cores']} cores: seed-images/s summed over "
        f"the processes side by side (PxT: P processes x T threads), {r['window_s']:g} s x "
        f"{r['repeats']} rounds (median), warm-up {r['warmup']}"
    )
    print("\n".join(contention_lines(r)))
    for row in r["rows"]:
        dtypes = {c["compute_dtype"] for c in row["layouts"].values()}
        want = "bfloat16" if row["precision"] == "bf16" else "float32"
        if dtypes != {want}:
            print(f"note: {row['step']} {row['precision']} computed in {sorted(dtypes)}")
    print()
    print(markdown(r))
