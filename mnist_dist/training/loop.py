"""The trainer: one step model with Accelerate, on CPU, one GPU or many, with mixed
precision (the entry points are ``mnist_dist.train``).

Writes ``config.json`` at start, ``checkpoint.pt`` after each epoch and ``result.json`` at
the end (all atomically) into ``--out``. ``--resume`` continues from the last epoch saved.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..config import Runtime, TrainConfig
from ..data import Augment, TrainBatches, eval_batches, load_mnist
from ..errors import UserError
from ..fsio import write_json
from ..models import build_model, count_params
from ..rundir import (
    CHECKPOINT,
    CONFIG,
    RESULT,
    checkpoint_state,
    load_checkpoint,
    restore,
    result_config,
    save_checkpoint,
)
from .runinfo import cpu_threads, git_commit, make_result, run_env
from .tracking import Tracker

PROGRESS_EVERY_S = 30.0  # non-TTY output (SLURM logs): a progress line this often, seconds


def train(cfg: TrainConfig, rt: Runtime) -> dict:
    """Run one training job end to end and return the result dict (as in result.json)."""
    cfg = cfg.resolve()
    out = run_folder(cfg, rt)
    if rt.resume and (out / RESULT).is_file():
        return finished_result(out, cfg)
    commit, t_start = git_commit(), time.perf_counter()  # commit at start: HEAD may move
    ckpt = load_checkpoint(out / CHECKPOINT, cfg) if rt.resume else None
    torch.set_num_threads(cpu_threads(rt.threads))
    accelerator = make_accelerator(cfg, rt)
    if accelerator.is_main_process:
        write_json(out / CONFIG, cfg.to_dict())
    data, val, batches = load_data(cfg, rt, accelerator)
    net = build_net(cfg, rt.float64)
    optimizer, scheduler, per_batch = build_optim(net, cfg, len(batches))
    net = net.to(accelerator.device)
    ema = make_ema(net, cfg)
    history, wall_before = restore(ckpt, net, optimizer, scheduler, accelerator, out, ema)
    model, optimizer = accelerator.prepare(net, optimizer)
    if cfg.compile:
        model = compile_model(model, accelerator.device)
    tracker = Tracker.start(cfg, rt, out, accelerator.is_main_process)
    tracker.catch_up(history)  # epochs saved before a preemption that W&B never received
    probe = DtypeProbe(net)
    accelerator.print(
        f"{cfg.step}: {count_params(net):,} params, {len(batches.x):,} train images, world "
        f"{accelerator.num_processes}, {accelerator.device}, mixed precision "
        f"{cfg.mixed_precision}, {torch.get_num_threads()} threads"
    )
    for epoch in range(len(history), cfg.epochs):
        sched = (scheduler, per_batch, ema)
        train_row = run_epoch(epoch, model, optimizer, sched, batches, cfg, rt, accelerator)
        t_eval = time.perf_counter()
        scores = score(model, ema, data, val, cfg, accelerator, last=epoch + 1 == cfg.epochs)
        row = dict(epoch=epoch + 1, **train_row, **scores)
        row["eval_seconds"] = time.perf_counter() - t_eval  # not in `seconds`: training only
        history.append(row)
        accelerator.print(epoch_line(row, cfg), flush=True)  # flush: SLURM logs are files
        if accelerator.is_main_process:  # before W&B hears of the epoch: see Tracker.catch_up
            wall = wall_before + time.perf_counter() - t_start
            state = (net, optimizer, scheduler, accelerator, history, cfg, wall, ema)
            save_checkpoint(out / CHECKPOINT, checkpoint_state(*state))
        tracker.log(row)
        accelerator.wait_for_everyone()
    probe.remove()
    result = make_result(
        cfg,
        history,
        params=count_params(net),
        n_train=len(batches.x),
        n_test=len(data.test_x) if cfg.test_eval != "never" else 0,
        wall_seconds=wall_before + time.perf_counter() - t_start,
        run=dict(run_env(accelerator, rt), compute_dtype=probe.dtype, git_commit=commit),
    )
    if accelerator.is_main_process:  # local results first: W&B may be slow or broken
        write_json(out / RESULT, result)
        final = result["final_test_acc"] if cfg.test_eval != "never" else result["final_val_acc"]
        what = "test" if cfg.test_eval != "never" else "validation"
        # --test-eval never without --val-split scores nothing (a timing run): say so.
        said = f"final {what} accuracy {final:.2f}%" if final is not None else "nothing scored"
        accelerator.print(f"{said}  -> {out / RESULT}")
    tracker.finish(result)
    accelerator.end_training()
    return result


# ---- setup ----------------------------------------------------------------------------


def run_folder(cfg: TrainConfig, rt: Runtime) -> Path:
    """``--out`` (default runs/<trial id>), created; a finished run is never overwritten."""
    out = Path(rt.out or Path("runs") / cfg.trial_id())
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out {out}: {e.strerror}; choose another folder") from e
    if not rt.resume and (out / RESULT).is_file():
        raise UserError(
            f"{out} holds a finished run (result.json); pass --resume to keep it, "
            "or choose a new --out"
        )
    return out


def finished_result(out: Path, cfg: TrainConfig) -> dict:
    """``--resume`` of a finished run: its result, after checking it is this config's."""
    result = json.loads((out / RESULT).read_text())
    if result_config(result).identity() != cfg.identity():
        raise UserError(f"{out} holds a different config's result; use a new --out")
    print(f"{out} is already complete; nothing to do")
    return result


def make_accelerator(cfg: TrainConfig, rt: Runtime):
    from accelerate import Accelerator

    if cfg.mixed_precision == "fp16" and (rt.cpu or not torch.cuda.is_available()):
        raise UserError("--mixed-precision fp16 needs a CUDA GPU; on CPU use bf16 or no")
    # cpu=True is also what makes Accelerate see torchrun's processes as MULTI_CPU (gloo).
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision, cpu=rt.cpu or not torch.cuda.is_available()
    )
    if accelerator.num_processes != cfg.world_size:
        raise UserError(
            f"the config says {cfg.world_size} process(es) but {accelerator.num_processes} "
            "are running; start the run through the launcher that set WORLD_SIZE"
        )
    return accelerator


def load_data(cfg: TrainConfig, rt: Runtime, accelerator, data=None):
    """(data on the device, the held-out (x, y) or None, this process's TrainBatches);
    ``data``: already loaded (a seed pack loads once for all its seeds)."""
    if data is None:
        with accelerator.main_process_first():  # only rank 0 may download
            data = load_mnist(rt.data_dir, rt.download).to(accelerator.device)
    n_fit = len(data.train_x) - cfg.val_split  # the held-out tail is never trained on
    if n_fit < 1:
        raise UserError(f"--val-split {cfg.val_split} leaves no training images; use fewer")
    end = n_fit if cfg.train_limit is None else min(n_fit, cfg.train_limit)
    if end < cfg.world_size:
        raise UserError(
            f"{end} training image(s) cannot be shared by {cfg.world_size} processes; "
            "use fewer processes or more images"
        )
    val = (data.train_x[n_fit:], data.train_y[n_fit:]) if cfg.val_split else None
    rank, world = accelerator.process_index, accelerator.num_processes
    aug = Augment(cfg.rotate_deg, cfg.crop_p, cfg.translate, cfg.scale)
    batches = TrainBatches(
        data.train_x[:end], data.train_y[:end], cfg.batch_size, cfg.seed, rank, world, aug
    )
    return data, val, batches


def build_net(cfg: TrainConfig, float64: bool = False) -> torch.nn.Module:
    from accelerate.utils import set_seed

    set_seed(cfg.seed)  # before building the model: the init depends on it
    net = build_model(cfg.step).double() if float64 else build_model(cfg.step)
    return net.to(memory_format=torch.channels_last) if cfg.channels_last else net


def build_optim(net, cfg: TrainConfig, steps_per_epoch: int):
    """(optimizer, scheduler, per_batch): SGD with momentum (optionally Nesterov) or AdamW;
    StepLR per epoch or OneCycle per batch. Stepped by us, not prepared by Accelerate: a
    prepared scheduler steps once per process per call. OneCycle peaks at cfg.lr after
    ``pct_start`` of the steps and ends at ``final_lr`` (PyTorch's peak/25/1e4 if unset),
    with the momentum held fixed."""
    if cfg.optimizer == "adamw":
        optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(
            net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
        )  # fmt: skip
    if cfg.scheduler == "onecycle":
        extra = {"final_div_factor": cfg.lr / 25 / cfg.final_lr} if cfg.final_lr else {}
        sched = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=cfg.pct_start,
            anneal_strategy=cfg.anneal, cycle_momentum=False, **extra,
        )  # fmt: skip
        return optimizer, sched, True
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step, cfg.lr_gamma), False


def make_ema(net, cfg: TrainConfig):
    """An exponential moving average of the weights, BatchNorm statistics included
    (``use_buffers``), updated after every optimizer step; None when the recipe has none."""
    if not cfg.ema_decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)


def compile_model(model, device: torch.device):
    """torch.compile; on CUDA with CUDA graphs ("reduce-overhead"): a step4 step at batch 64
    is about a hundred tiny kernels, so launch overhead, not arithmetic, bounds it there.
    ``dynamic=False``: the short last batch gets its own static graph (one recompile)."""
    mode = "reduce-overhead" if device.type == "cuda" else None
    return torch.compile(model, mode=mode, dynamic=False)


class DtypeProbe:
    """Records the dtype the first convolution really computes in (autocast may not apply)."""

    def __init__(self, net):
        self.dtype: str | None = None
        conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
        self.hook = conv.register_forward_hook(self)

    def __call__(self, module, inputs, output) -> None:
        self.dtype = self.dtype or str(output.dtype).replace("torch.", "")

    def remove(self) -> None:
        self.hook.remove()


# ---- one epoch ------------------------------------------------------------------------


def run_epoch(epoch, model, optimizer, sched, batches, cfg, rt, accelerator) -> dict:
    """Train one epoch; the row's training half (loss, accuracy, lr, seconds, img/s).

    ``sched`` is (scheduler, per_batch, ema or None). On a terminal a tqdm bar shows
    progress; into a file (SLURM, nohup) a line every PROGRESS_EVERY_S seconds does.
    """
    from tqdm.auto import tqdm

    scheduler, per_batch, ema = sched
    main, device = accelerator.is_main_process, accelerator.device
    model.train()
    lr = optimizer.param_groups[0]["lr"]
    # (loss * n, correct), on the device, in float64: exact counts, and a reported loss as
    # precise as the packed trainer's (the two are compared to 1e-8 in float64)
    sums = torch.zeros(2, device=device, dtype=torch.float64)
    seen, t0 = 0, time.perf_counter()
    tty = sys.stderr.isatty()
    bar = tqdm(
        batches.epoch(epoch),
        total=len(batches),
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        disable=not (main and rt.progress and tty),
        leave=False,
    )
    last_line = t0
    for i, (xb, yb) in enumerate(bar, 1):
        train_step(model, optimizer, accelerator, xb, yb, cfg, sums)
        if ema is not None:
            ema.update_parameters(accelerator.unwrap_model(model))
        seen += len(yb)
        if per_batch:
            scheduler.step()
        if main and rt.progress and not tty and time.perf_counter() - last_line > PROGRESS_EVERY_S:
            last_line = time.perf_counter()
            print(
                f"  epoch {epoch + 1} step {i}/{len(batches)}  loss {sums[0].item() / seen:.4f}"
                f"  {seen / (last_line - t0):,.0f} img/s",
                flush=True,
            )
    if not per_batch:
        scheduler.step()
    totals = accelerator.reduce(
        torch.cat([sums, torch.tensor([float(seen)], device=device)]), "sum"
    ).tolist()  # the epoch's one sync; the timing below includes the device's work
    seconds = time.perf_counter() - t0
    return dict(
        train_loss=totals[0] / totals[2],
        train_acc=100.0 * totals[1] / totals[2],
        lr=lr,
        seconds=seconds,
        images_per_s=totals[2] / seconds,
    )


def train_step(model, optimizer, accelerator, xb, yb, cfg: TrainConfig, sums) -> None:
    """One optimizer step; adds (loss * batch, correct) into ``sums`` (2,) on the device.

    The hot loop's whole body, shared with ``mnist-dist bench``: no host sync in here.
    The models return log-probabilities: NLL is their cross-entropy, and with label
    smoothing cross_entropy's own log_softmax leaves log-probabilities unchanged.
    """
    xb = xb.to(next(model.parameters()).dtype)  # float64 in the equivalence tests only
    if cfg.channels_last:
        xb = xb.contiguous(memory_format=torch.channels_last)
    logp = model(xb)
    if cfg.label_smoothing:
        loss = F.cross_entropy(logp, yb, label_smoothing=cfg.label_smoothing)
    else:
        loss = F.nll_loss(logp, yb)
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    optimizer.step()
    sums[0] += loss.detach().double() * len(yb)
    sums[1] += (logp.argmax(1) == yb).sum()


def score(model, ema, data, val, cfg: TrainConfig, accelerator, last: bool) -> dict:
    """This epoch's test (per ``test_eval``) and validation scores. ``test_*``/``val_*`` are
    the headline weights'; with an EMA, ``model_*`` and ``ema_*`` give both."""
    sets = [("val", *val)] if val else []  # the tuning signal; test figures are only reported
    if cfg.test_eval == "every" or (cfg.test_eval == "final" and last):
        sets.insert(0, ("test", data.test_x, data.test_y))
    weights = [("model", model)] + ([("ema", ema.module)] if ema is not None else [])
    row: dict[str, float] = {}
    for name, x, y in sets:
        for which, net in weights:
            loss, acc, _ = evaluate(net, x, y, cfg, accelerator)
            if ema is not None:
                row[f"{which}_{name}_loss"], row[f"{which}_{name}_acc"] = loss, acc
            if which == cfg.headline:
                row[f"{name}_loss"], row[f"{name}_acc"] = loss, acc
    return row


@torch.no_grad()
def evaluate(model, x, y, cfg: TrainConfig, accelerator) -> tuple[float, float, int]:
    """Loss and accuracy (%) over all of (x, y), each image seen once across ranks."""
    model.eval()
    sums = torch.zeros(3, device=accelerator.device, dtype=torch.float64)
    rank, world = accelerator.process_index, accelerator.num_processes
    for xb, yb in eval_batches(x, y, cfg.eval_batch_size, rank, world):
        with accelerator.autocast():  # the EMA copy is not prepared: same dtype as the model
            logp = model(xb.to(next(model.parameters()).dtype)).double()
        sums += torch.stack(
            [
                F.nll_loss(logp, yb, reduction="sum"),
                (logp.argmax(1) == yb).sum(),
                yb.new_tensor(len(yb)),
            ]
        ).double()
    loss, correct, n = accelerator.reduce(sums, "sum").tolist()
    return loss / n, 100.0 * correct / n, int(n)


def epoch_line(row: dict[str, Any], cfg: TrainConfig) -> str:
    test = (
        f"test loss {row['test_loss']:.4f} acc {row['test_acc']:.2f}%  "
        if "test_acc" in row
        else ""
    )
    val = f"val acc {row['val_acc']:.2f}%  " if "val_acc" in row else ""
    ema = f"({cfg.headline} weights)  " if cfg.ema_decay else ""
    return (
        f"epoch {row['epoch']:2d}/{cfg.epochs}  train loss {row['train_loss']:.4f} "
        f"acc {row['train_acc']:.2f}%  {test}{val}{ema}lr {row['lr']:.4g}  "
        f"{row['seconds']:.1f}s  {row['images_per_s']:,.0f} img/s"
    )
