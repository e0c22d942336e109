"""``mnist-dist bench --all-steps``: every step, origin vs ours in fp32 and in bf16, one run.

    mnist-dist bench --all-steps --json > results/bench/raw/all-steps.json
    mnist-dist bench --step-list step3,step4 --iters 100 --repeats 5

Per step, at its recipe's batch size (or ``--batch-size``), three loops are timed:
``origin`` (``bench.origin_loop``: PIL transforms, a worker DataLoader, NCHW fp32), and our
training step (``bench.our_loop``) in ``fp32`` and in ``bf16`` (bf16 autocast on the forward,
as ``--mixed-precision bf16`` trains). Every loop of every step is warmed up, then each of
``--repeats`` rounds times all of them in turn, so that load from other processes hits every
cell alike and the ratios come from one run; the median round is reported. The JSON records
the CPU model, the torch thread count and the load average (1, 5, 15 min) before and after.
Per step: images per second of each loop, ``bf16_gain`` = fp32 time / bf16 time (above 1:
bf16 is faster), and the speedup of each of ours over the origin (origin time / ours).
"""

from __future__ import annotations

import torch

from ..config import RECIPES, TrainConfig
from ..data import TrainBatches, load_mnist
from ..errors import UserError
from ..training.runinfo import contention_lines, cpu_threads, load_avg, machine_facts
from .timing import forever, measure, origin_loader, origin_loop, our_loop

LOOPS = ("origin", "fp32", "bf16")


def step_list(all_steps: bool, names: str | None) -> list[str]:
    """Every registered step (``--all-steps``), or ``--step-list``'s, in the order given."""
    if all_steps and names is not None:
        raise UserError("give --all-steps or --step-list, not both")
    if all_steps:
        return list(RECIPES)
    steps = list(dict.fromkeys(s.strip() for s in (names or "").split(",") if s.strip()))
    if not steps:
        raise UserError("--step-list is empty; name steps, e.g. --step-list step3,step4")
    for step in steps:
        if step not in RECIPES:
            TrainConfig(step=step).resolve()  # raises the one-line unknown-step error
    return steps


def check_args(args) -> None:
    for flag in ("variants", "time_to_target", "table"):
        if getattr(args, flag):
            name = "--" + flag.replace("_", "-")
            raise UserError(f"{name} does not go with --all-steps/--step-list; run it apart")
    if args.mixed_precision != "no":
        raise UserError(
            "--all-steps/--step-list time fp32 and bf16 side by side; leave out --mixed-precision"
        )


def run_all(args) -> dict:
    """Time origin, fp32 and bf16 for each step, interleaved; the JSON-ready result."""
    check_args(args)
    steps = step_list(args.all_steps, args.step_list)
    from accelerate import Accelerator

    cuda = torch.cuda.is_available() and not args.cpu
    if cuda and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU has no bf16: time fp32 alone with `mnist-dist bench --step S`")
    threads = args.threads or cpu_threads()
    torch.set_num_threads(threads)
    # fp32 accelerator; our_loop(bf16=True) adds the bf16 autocast Accelerate would.
    accelerator = Accelerator(mixed_precision="no", cpu=not cuda)
    device = accelerator.device
    load_before = load_avg()
    data = load_mnist(args.data_dir, download=False).to(device)
    loops, batch = {}, {}
    for step in steps:
        cfg = TrainConfig(step=step, batch_size=args.batch_size).resolve()
        batch[step] = cfg.batch_size
        ours = TrainBatches(data.train_x, data.train_y, cfg.batch_size, seed=0)
        loader = origin_loader(args.data_dir, cfg.batch_size, args.workers, device.type == "cuda")
        loops[f"{step} origin"] = origin_loop(step, loader, device, cfg.lr)
        for precision in ("fp32", "bf16"):
            loops[f"{step} {precision}"] = our_loop(
                step,
                accelerator,
                forever(ours.epoch),
                cfg.lr,
                args.channels_last,
                args.compile,
                bf16=precision == "bf16",
            )
    res = measure(loops, device, args.iters, args.warmup, args.repeats)
    n_train = len(data.train_x)
    rows = []
    for step in steps:
        row = dict(step=step, batch_size=batch[step])
        for loop in LOOPS:
            m = row[loop] = res[f"{step} {loop}"]
            m["epoch_seconds"] = n_train / m["images_per_s"]
        for loop in ("fp32", "bf16"):  # measured; the origin has no autocast at all
            row[loop]["compute_dtype"] = loops[f"{step} {loop}"].compute_dtype
        ms = {loop: row[loop]["ms_per_step"] for loop in LOOPS}
        row.update(
            bf16_gain=ms["fp32"] / ms["bf16"],
            fp32_speedup=ms["origin"] / ms["fp32"],
            bf16_speedup=ms["origin"] / ms["bf16"],
        )
        rows.append(row)
    return dict(
        mode="all-steps",
        per_step=rows,
        **machine_facts(device, load_before),
        threads=threads,
        steps=args.iters,
        warmup=args.warmup,
        repeats=args.repeats,
        origin_workers=args.workers,
        origin_setup="PIL transforms, DataLoader, plain PyTorch, NCHW, fp32, no compile",
        channels_last=args.channels_last,
        compile=args.compile,
        train_images=n_train,
    )


TABLE_HEAD = ["step", "batch", "origin img/s", "fp32 img/s", "bf16 img/s", "bf16 gain"]
TABLE_HEAD += ["fp32 speedup vs origin", "bf16 speedup vs origin"]


def markdown(r: dict) -> str:
    """The Markdown table: one row per step."""
    lines = ["| " + " | ".join(TABLE_HEAD) + " |", "|" + "---|" * len(TABLE_HEAD)]
    for row in r["per_step"]:
        cells = [row["step"], str(row["batch_size"])]
        cells += [f"{row[loop]['images_per_s']:,.0f}" for loop in LOOPS]
        cells += [f"{row[k]:.2f}x" for k in ("bf16_gain", "fp32_speedup", "bf16_speedup")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_all(r: dict) -> None:
    where = r["device_name"] or r["cpu_model"]
    print(
        f"bench all steps on {r['device']} ({where}), {r['threads']} threads: origin, fp32 and "
        f"bf16 interleaved, {r['steps']} updates x {r['repeats']} rounds (median), "
        f"warm-up {r['warmup']}"
    )
    print("\n".join(contention_lines(r)))
    for row in r["per_step"]:
        if row["bf16"]["compute_dtype"] != "bfloat16":
            print(f"note: {row['step']} bf16 computed in {row['bf16']['compute_dtype']}")
    print()
    print(markdown(r))
