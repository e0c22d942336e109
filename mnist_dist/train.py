"""Train one step model with Accelerate: CPU, one GPU or many, with mixed precision.

    mnist-dist train --step step4 --out runs/s4
    python -m mnist_dist.train --step step4 --epochs 1 --train-limit 2000 --out /tmp/r
    torchrun --nproc_per_node 2 -m mnist_dist.train --step step4 --epochs 1 --out /tmp/r2
    accelerate launch --config_file launch/multi_gpu_bf16.yaml -m mnist_dist.train --step step4

Writes ``config.json`` at start, ``checkpoint.pt`` after each epoch and ``result.json`` at
the end (both atomically) into ``--out``. ``--resume`` continues from the last epoch saved.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import __version__
from .config import MIXED_PRECISION, SCHEDULERS, TARGET_ACC, Runtime, TrainConfig
from .data import DataFactory, TrainBatches, eval_batches, load_mnist
from .errors import ArgumentParser, UserError, cli_errors, write_json_atomic
from .models import build_model, count_params
from .tracking import Tracker

CHECKPOINT = "checkpoint.pt"


def cpu_threads() -> int:
    """Threads for this process: what SLURM or the launcher grants, never oversubscribed."""
    for var in ("SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return max(1, int(os.environ[var]))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, len(os.sched_getaffinity(0)) // local_world)


def compile_model(model, device: torch.device):
    """torch.compile; on CUDA with CUDA graphs ("reduce-overhead"): a step4 step at batch 64
    is about a hundred tiny kernels, so launch overhead, not arithmetic, bounds it there.
    ``dynamic=False``: the short last batch gets its own static graph (one recompile)."""
    mode = "reduce-overhead" if device.type == "cuda" else None
    return torch.compile(model, mode=mode, dynamic=False)


def git_commit() -> str | None:
    """The commit this package runs from, with ``+dirty`` for uncommitted changes."""
    here = Path(__file__).parent
    try:
        run = lambda *a: subprocess.run(  # noqa: E731
            ["git", "-C", str(here), *a], capture_output=True, text=True, timeout=5
        )
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def load_checkpoint(path: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt["config"] != cfg.to_dict():
        raise UserError(f"{path} was written by a different config; use a new --out to start over")
    return ckpt


def train(cfg: TrainConfig, rt: Runtime, data_factory: DataFactory = load_mnist) -> dict:
    """Run one training job end to end and return the result dict (as in result.json)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    cfg = cfg.resolve()
    if cfg.mixed_precision == "fp16" and (rt.cpu or not torch.cuda.is_available()):
        raise UserError("--mixed-precision fp16 needs a CUDA GPU; on CPU use bf16 or no")
    out = Path(rt.out or Path("runs") / cfg.trial_id())
    commit = git_commit()  # at start: HEAD may move while a long run trains
    torch.set_num_threads(cpu_threads())
    # cpu=True is also what makes Accelerate see torchrun's processes as MULTI_CPU (gloo).
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        cpu=rt.cpu or not torch.cuda.is_available(),
        log_with=Tracker.log_with(rt),
    )
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    main = accelerator.is_main_process

    ckpt = load_checkpoint(out / CHECKPOINT, cfg) if rt.resume else None
    if rt.resume and (out / "result.json").is_file() and ckpt and ckpt["epoch"] >= cfg.epochs:
        accelerator.print(f"{out} is already complete; nothing to do")
        return json.loads((out / "result.json").read_text())
    if main:
        write_json_atomic(out / "config.json", cfg.to_dict())

    with accelerator.main_process_first():  # only rank 0 may download
        data = data_factory(rt.data_dir, rt.download).to(device)
    n_fit = len(data.train_x) - cfg.val_split  # the held-out tail is never trained on
    if n_fit < 1:
        raise UserError(f"--val-split {cfg.val_split} leaves no training images; use fewer")
    end = n_fit if cfg.train_limit is None else min(n_fit, cfg.train_limit)
    train_x, train_y = data.train_x[:end], data.train_y[:end]
    val = (data.train_x[n_fit:], data.train_y[n_fit:]) if cfg.val_split else None
    batches = TrainBatches(train_x, train_y, cfg.batch_size, cfg.seed, rank, world)

    set_seed(cfg.seed)  # before building the model: the init depends on it
    net = build_model(cfg.step)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    # Stepped by us, not prepared by Accelerate: a prepared scheduler steps once per
    # process per call. StepLR steps per epoch; OneCycle per batch, peaking at cfg.lr after
    # 30% of the steps (PyTorch's defaults otherwise), with cfg.momentum held fixed.
    per_batch = cfg.scheduler == "onecycle"
    if per_batch:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, cfg.lr, total_steps=cfg.epochs * len(batches), cycle_momentum=False
        )
    else:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step, cfg.lr_gamma)
    history: list[dict[str, Any]] = []
    if ckpt:
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        history = ckpt["history"]
        accelerator.print(f"resuming {out} after epoch {ckpt['epoch']}")
    model, optimizer = accelerator.prepare(net.to(device), optimizer)
    if cfg.compile:
        model = compile_model(model, device)

    # Record the dtype the convolutions really compute in (autocast may not apply).
    seen_dtype: dict[str, str] = {}
    first_conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))

    def record_dtype(module, inputs, output) -> None:
        seen_dtype.setdefault("dtype", str(output.dtype).replace("torch.", ""))

    hook = first_conv.register_forward_hook(record_dtype)
    tracker = Tracker.start(accelerator, cfg, rt, out)
    params = count_params(net)
    accelerator.print(
        f"{cfg.step}: {params:,} params, {len(train_x):,} train images, world {world}, "
        f"{device}, mixed precision {cfg.mixed_precision}, {torch.get_num_threads()} threads"
    )
    t_start = time.perf_counter()
    for epoch in range(len(history), cfg.epochs):
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        sums = torch.zeros(2, device=device)  # (loss * n, correct), kept on the device
        seen = 0
        bar = tqdm(
            batches.epoch(epoch),
            total=len(batches),
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not (main and rt.progress and sys.stderr.isatty()),
            leave=False,
        )
        for xb, yb in bar:
            train_step(model, optimizer, accelerator, xb, yb, cfg.channels_last, sums)
            seen += len(yb)
            if per_batch:
                scheduler.step()
        if not per_batch:
            scheduler.step()
        totals = accelerator.reduce(
            torch.cat([sums, torch.tensor([float(seen)], device=device)]),
            "sum",
        ).tolist()  # the epoch's one sync; the timing below includes the device's work
        seconds = time.perf_counter() - t0
        t_eval = time.perf_counter()
        test_loss, test_acc, n_test = evaluate(model, data.test_x, data.test_y, cfg, accelerator)
        if val:  # the tuning signal: the test figures are only ever reported
            val_loss, val_acc, _ = evaluate(model, *val, cfg, accelerator)
        eval_seconds = time.perf_counter() - t_eval  # not in `seconds`: training time only
        row = dict(
            epoch=epoch + 1,
            train_loss=totals[0] / totals[2],
            train_acc=100.0 * totals[1] / totals[2],
            test_loss=test_loss,
            test_acc=test_acc,
            lr=lr,
            seconds=seconds,
            images_per_s=totals[2] / seconds,
            eval_seconds=eval_seconds,
            **(dict(val_loss=val_loss, val_acc=val_acc) if val else {}),
        )
        history.append(row)
        accelerator.print(
            f"epoch {row['epoch']:2d}/{cfg.epochs}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.2f}%  test loss {test_loss:.4f} acc {test_acc:.2f}%  "
            + (f"val acc {val_acc:.2f}%  " if val else "")
            + f"lr {lr:.4g}  {seconds:.1f}s  {row['images_per_s']:,.0f} img/s",
            flush=True,  # live logs under SLURM and nohup, where stdout is a file
        )
        tracker.log(row)
        if main:
            save_checkpoint(out / CHECKPOINT, net, optimizer, scheduler, history, cfg)
        accelerator.wait_for_everyone()
    hook.remove()

    accs = [h["test_acc"] for h in history]
    best = max(range(len(accs)), key=accs.__getitem__)
    result = dict(
        step=cfg.step,
        seed=cfg.seed,
        params=params,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        world_size=world,
        mixed_precision=cfg.mixed_precision,
        compute_dtype=seen_dtype.get("dtype"),
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        train_images=len(train_x),
        val_images=cfg.val_split,
        test_images=n_test,
        history=history,
        final_test_acc=accs[-1],
        final_val_acc=history[-1].get("val_acc"),
        best_test_acc=accs[best],  # reported for comparison only; never the headline
        best_epoch=best + 1,
        first_epoch_at_target=next((i + 1 for i, a in enumerate(accs) if a >= TARGET_ACC), None),
        wall_seconds=time.perf_counter() - t_start,
        train_seconds=sum(h["seconds"] for h in history),
        trial_id=cfg.trial_id(),
        config=cfg.to_dict(),
        versions=versions(),
        git_commit=commit,
    )
    if main:  # local results first: W&B may be slow or broken, they must not wait on it
        write_json_atomic(out / "result.json", result)
        accelerator.print(f"final test accuracy {accs[-1]:.2f}%  -> {out / 'result.json'}")
    tracker.finish(result)
    accelerator.end_training()
    return result


def train_step(model, optimizer, accelerator, xb, yb, channels_last: bool, sums) -> None:
    """One optimizer step; adds (loss * batch, correct) into ``sums`` (2,) on the device.

    The hot loop's whole body, shared with ``mnist-dist bench``: no host sync in here.
    """
    if channels_last:
        xb = xb.contiguous(memory_format=torch.channels_last)
    logp = model(xb)
    loss = F.nll_loss(logp, yb)
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    optimizer.step()
    sums[0] += loss.detach().float() * len(yb)
    sums[1] += (logp.argmax(1) == yb).sum()


@torch.no_grad()
def evaluate(model, x, y, cfg: TrainConfig, accelerator) -> tuple[float, float, int]:
    """Loss and accuracy (%) over all of (x, y), each image seen once across ranks."""
    model.eval()
    sums = torch.zeros(3, device=accelerator.device)
    rank, world = accelerator.process_index, accelerator.num_processes
    for xb, yb in eval_batches(x, y, cfg.eval_batch_size, rank, world):
        logp = model(xb).float()
        sums += torch.stack(
            [
                F.nll_loss(logp, yb, reduction="sum"),
                (logp.argmax(1) == yb).sum(),
                yb.new_tensor(len(yb)),
            ]
        ).float()
    loss, correct, n = accelerator.reduce(sums, "sum").tolist()
    return loss / n, 100.0 * correct / n, int(n)


def save_checkpoint(path: Path, net, optimizer, scheduler, history, cfg: TrainConfig) -> None:
    """Atomic: a preempted write leaves the previous epoch's checkpoint intact."""
    tmp = path.with_suffix(".tmp")
    state = dict(
        epoch=len(history),
        model=net.state_dict(),
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        history=history,
        config=cfg.to_dict(),
    )
    torch.save(state, tmp)
    os.replace(tmp, path)


def versions() -> dict[str, str]:
    import accelerate
    import torchvision

    return dict(
        mnist_dist=__version__,
        python=platform.python_version(),
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        accelerate=accelerate.__version__,
    )


def build_parser(prog: str = "mnist-dist train") -> argparse.ArgumentParser:
    p = ArgumentParser(prog=prog, description="Train one step model (defaults: the step's recipe).")
    add = p.add_argument
    add("--step", default="step4", help="registered model, see `mnist-dist models`")
    add("--seed", type=int, default=0)
    add("--epochs", type=int)
    add("--batch-size", type=int, help="per process")
    add("--lr", type=float)
    add("--momentum", type=float, default=0.9)
    add("--scheduler", choices=SCHEDULERS, help="step: StepLR per epoch; onecycle: per batch")
    add("--lr-step", type=int, help="StepLR step size, epochs")
    add("--lr-gamma", type=float, help="StepLR factor")
    add("--weight-decay", type=float, help="SGD weight decay")
    add("--train-limit", type=int, metavar="N", help="train on the first N images only")
    add(
        "--val-split",
        type=int,
        default=0,
        metavar="N",
        help="hold out the last N training images as a validation set (for tuning)",
    )
    add("--mixed-precision", choices=MIXED_PRECISION, help="default: accelerate config, or no")
    add("--eval-batch-size", type=int, default=2000)
    add("--channels-last", action=argparse.BooleanOptionalAction, default=True, help="NHWC")
    add("--compile", action="store_true", help="torch.compile the model")
    add("--data-dir", help="folder holding MNIST/raw (default: $MNIST_DATA_DIR, then cache)")
    add("--no-download", dest="download", action="store_false", help="never fetch MNIST")
    add("--out", help="run folder (default: runs/<trial id>)")
    add("--resume", action="store_true", help="continue from the last saved epoch in --out")
    add("--cpu", action="store_true", help="run on CPU even when a GPU is present")
    add("--wandb", default="off", choices=("off", "offline", "online"))
    add("--wandb-project", default="mnist-dist")
    add("--wandb-group", help="W&B group (default: the step)")
    add("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def parse_args(argv: list[str] | None, prog: str = "mnist-dist train"):
    """argv -> (TrainConfig, Runtime): the dataclass fields split by name."""
    args = vars(build_parser(prog).parse_args(argv))
    cfg_keys = TrainConfig.__dataclass_fields__.keys()
    cfg = TrainConfig(**{k: v for k, v in args.items() if k in cfg_keys})
    return cfg, Runtime(**{k: v for k, v in args.items() if k not in cfg_keys})


@cli_errors
def main(argv: list[str] | None = None, prog: str = "python -m mnist_dist.train") -> None:
    cfg, rt = parse_args(argv, prog)
    train(cfg, rt)


if __name__ == "__main__":
    main()
