"""The trainer: one epoch loop for one seed (alone, or over DDP processes with Accelerate,
on CPU, one GPU or many, with mixed precision) and for a pack of seeds trained as one
grouped net (``training.packed``). The entry points are ``mnist_dist.train``.

Writes ``config.json`` at start, ``checkpoint.pt`` after each epoch and ``result.json`` at
the end (all atomically) into ``--out``. ``--resume`` continues from the last epoch saved.

After each epoch the loop hands that epoch's rows to the per-epoch hooks, which answer per
seed: go on, or stop with a state ("diverged", "pruned"). The divergence rule comes first
(``stop_diverged``: a training loss that is not finite); the caller's hook (a search's
pruner) hears only the seeds that go on. A stopped seed's result.json holds that state and
its history to that epoch; the other seeds of a pack go on.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..config import Runtime, TrainConfig
from ..data import eval_batches
from ..rundir import CHECKPOINT, RESULT, STOPPED, load_checkpoint, trial_locks
from .setup import RUNNING, Run, finished_result, run_folder, seed_prefix

PROGRESS_EVERY_S = 30.0  # non-TTY output (SLURM logs): a progress line this often, seconds
GO_ON, (DIVERGED, PRUNED) = RUNNING, STOPPED  # the per-epoch hook's answers
ANSWERS = (GO_ON, *STOPPED)
# (epoch, that epoch's row of each seed still training) -> one answer per row
EpochHook = Callable[[int, list[dict[str, Any]]], list[str]]


def go_on(epoch: int, rows: list[dict[str, Any]]) -> list[str]:
    return [GO_ON] * len(rows)


LOSSES = ("train_loss", "val_loss", "test_loss")  # the epoch's losses the rule reads


def stop_diverged(epoch: int, rows: list[dict[str, Any]]) -> list[str]:
    """The divergence rule: a seed with a NaN or infinite loss this epoch stops: training,
    or a held-out one (weights that went NaN on the epoch's last batch show only there).
    (Its weights are NaN from then on; a pack's other seeds never see them.)"""
    return [
        GO_ON if all(math.isfinite(row[k]) for k in LOSSES if row.get(k) is not None) else DIVERGED
        for row in rows
    ]


def ask(hooks: tuple[EpochHook, ...], epoch: int, rows: list[dict[str, Any]]) -> list[str]:
    """Each hook in turn, over the rows that every hook before it let go on."""
    answers = [GO_ON] * len(rows)
    for hook in hooks:
        live = [i for i, answer in enumerate(answers) if answer == GO_ON]
        said = hook(epoch, [rows[i] for i in live])
        if len(said) != len(live) or not set(said) <= set(ANSWERS):
            raise ValueError(f"a per-epoch hook answered {said!r} for {len(live)} rows; "
                             f"answer one of {ANSWERS} per row")  # fmt: skip
        for i, answer in zip(live, said, strict=True):
            answers[i] = answer
    return answers


def train(cfg: TrainConfig, rt: Runtime, on_epoch: EpochHook = go_on) -> dict:
    """Run one training job end to end and return the result dict (as in result.json)."""
    cfg = cfg.resolve()
    out = run_folder(cfg, rt)
    with trial_locks([out]):
        if rt.resume and (out / RESULT).is_file():
            return finished_result(out, cfg)
        ckpt = load_checkpoint(out / CHECKPOINT, cfg) if rt.resume else None
        return fit(Run([cfg], rt, [out], ckpt), on_epoch)[cfg.seed]


def fit(run: Run, on_epoch: EpochHook = go_on) -> dict[int, dict]:
    """The epoch loop: train, score, ask the hook, checkpoint, log; {seed: result}."""
    cfg, acc = run.cfg, run.accelerator
    for epoch in range(max(map(len, run.histories)), cfg.epochs):  # a stopped seed's is short
        active = [n for n, state in enumerate(run.states) if state == RUNNING]
        if not active:
            break
        train_rows = run_epoch(epoch, run, active)
        t_eval = time.perf_counter()
        if cfg.bn_recal and epoch + 1 == cfg.epochs:
            recalibrate_bn(run)
        scores = score(run, last=epoch + 1 == cfg.epochs)
        rows = [dict(epoch=epoch + 1, **train_rows[n], **scores[n]) for n in active]
        for n, row in zip(active, rows, strict=True):
            row["eval_seconds"] = time.perf_counter() - t_eval  # not in `seconds`
            run.histories[n].append(row)
            acc.print(seed_prefix(run, n) + epoch_line(row, cfg), flush=True)  # SLURM logs
        for n, row, answer in zip(
            active, rows, ask((stop_diverged, on_epoch), epoch + 1, rows), strict=True
        ):
            run.states[n] = answer
            if answer != GO_ON:
                acc.print(f"{seed_prefix(run, n)}stopped after epoch {epoch + 1}: {answer}"
                          f" (training loss {row['train_loss']:.4g})", flush=True)  # fmt: skip
        if acc.is_main_process:  # before W&B hears of the epoch: see Tracker.catch_up
            run.save()
        for n, row in zip(active, rows, strict=True):
            run.trackers[n].log(row)
        acc.wait_for_everyone()
    run.probe.remove()
    facts = run.run_facts()  # a collective: on every rank
    results = {c.seed: run.finish(n, facts) for n, c in enumerate(run.cfgs)}
    acc.end_training()
    return results


# ---- one epoch ------------------------------------------------------------------------


def run_epoch(epoch: int, run: Run, active: list[int]) -> list[dict]:
    """Train one epoch of every seed; per seed, the row's training half (loss, accuracy,
    lr, seconds, img/s; a pack's seconds and img/s are the whole pack's).

    On a terminal a tqdm bar shows progress; into a file (SLURM, nohup) a line every
    PROGRESS_EVERY_S seconds does.
    """
    from tqdm.auto import tqdm

    cfg, acc, rt, count = run.cfg, run.accelerator, run.rt, len(run.cfgs)
    main, device = acc.is_main_process, acc.device
    run.model.train()
    lr = run.optimizer.param_groups[0]["lr"]
    # per seed (loss * n, correct), on the device, in float64: exact counts, and a loss as
    # precise in a pack as alone (the two are compared to 1e-8 in float64)
    sums = torch.zeros(count, 2, device=device, dtype=torch.float64)
    seen, t0, tty = 0, time.perf_counter(), sys.stderr.isatty()
    bar = tqdm(
        run.feed(epoch),
        total=len(run.batches[0]),
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        disable=not (main and rt.progress and tty),
        leave=False,
    )
    last_line = t0
    for i, (x, y) in enumerate(bar, 1):
        run.step(x, y, sums, active)
        if run.ema is not None:
            run.ema.update_parameters(acc.unwrap_model(run.model))
        seen += len(y)
        if run.per_batch:
            run.scheduler.step()
        if main and rt.progress and not tty and time.perf_counter() - last_line > PROGRESS_EVERY_S:
            last_line = time.perf_counter()
            loss = sums[active, 0].mean().item() / seen
            print(f"  epoch {epoch + 1} batch {i}/{len(run.batches[0])}  loss {loss:.4f}  "
                  f"{seen * count / (last_line - t0):,.0f} img/s", flush=True)  # fmt: skip
    if not run.per_batch:
        run.scheduler.step()
    totals = acc.reduce(
        torch.cat([sums.flatten(), torch.tensor([float(seen)], device=device)]), "sum"
    ).tolist()  # the epoch's one sync; the timing below includes the device's work
    seconds, n_seen = time.perf_counter() - t0, totals[-1]
    return [
        dict(
            train_loss=totals[2 * n] / n_seen,
            train_acc=100.0 * totals[2 * n + 1] / n_seen,
            lr=lr,
            seconds=seconds,
            images_per_s=n_seen * count / seconds,
        )
        for n in range(count)
    ]


BN_RECAL_BATCH = 1000  # images per forward, in a pack as alone: the same batch means


@torch.no_grad()
def recalibrate_bn(run: Run) -> None:
    """``bn_recal``: each BatchNorm's running statistics recomputed after the last epoch,
    as the plain average over the clean (unaugmented) training images, in batches of
    BN_RECAL_BATCH: the weights are final, and the augmented batches' statistics no longer
    describe what the net will see. Every rank sees every training image: the same buffers
    everywhere. Reads no validation or test image."""
    count, batches = len(run.cfgs), run.batches[0]
    for net in [run.net] + ([run.ema.module] if run.ema is not None else []):
        norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches
        mode, dtype = net.training, next(net.parameters()).dtype
        net.train()  # batch statistics in the forward, running ones updated
        for xb, _ in eval_batches(batches.x, batches.y, BN_RECAL_BATCH):
            with run.accelerator.autocast():
                net(xb.to(dtype).expand(-1, count, -1, -1).contiguous())  # (b, count, 28, 28)
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        net.train(mode)


def score(run: Run, last: bool) -> list[dict]:
    """Per seed, this epoch's test (per ``test_eval``) and validation scores.
    ``test_*``/``val_*`` are the headline weights'; with an EMA, ``model_*`` and ``ema_*``
    give both. Every seed is scored on the same images."""
    cfg, count = run.cfg, len(run.cfgs)
    sets = [("val", *run.val)] if run.val else []  # the tuning signal; test is only reported
    if cfg.test_eval == "every" or (cfg.test_eval == "final" and last):
        sets.insert(0, ("test", run.data.test_x, run.data.test_y))
    weights = [("model", run.model)] + ([("ema", run.ema.module)] if run.ema is not None else [])
    rows: list[dict[str, float]] = [{} for _ in range(count)]
    for name, x, y in sets:
        for which, net in weights:
            for n, (loss, acc) in enumerate(evaluate(net, x, y, cfg, run.accelerator, count)):
                if run.ema is not None:
                    rows[n][f"{which}_{name}_loss"], rows[n][f"{which}_{name}_acc"] = loss, acc
                if which == cfg.headline:
                    rows[n][f"{name}_loss"], rows[n][f"{name}_acc"] = loss, acc
    return rows


@torch.no_grad()
def evaluate(model, x, y, cfg: TrainConfig, accelerator, count: int = 1) -> list[tuple]:
    """(loss, accuracy %) per seed over all of (x, y), each image seen once across ranks.
    A pack of ``count`` seeds sees every image in each seed's channel, in batches of
    eval_batch_size / count images: the packed activations are count times wider."""
    model.eval()
    dtype = next(model.parameters()).dtype
    sums = torch.zeros(count * 2 + 1, device=accelerator.device, dtype=torch.float64)
    rank, world = accelerator.process_index, accelerator.num_processes
    for xb, yb in eval_batches(x, y, max(1, cfg.eval_batch_size // count), rank, world):
        xb = xb.to(dtype).expand(-1, count, -1, -1).contiguous()  # (b, count, 28, 28)
        with accelerator.autocast():  # the EMA copy is not prepared: same dtype as the model
            logp = seed_log_probs(model(xb)).double().transpose(1, 2)  # (b, 10, count)
        target = yb[:, None].expand(-1, count)
        sums[:count] += F.nll_loss(logp, target, reduction="none").sum(0)
        sums[count:-1] += (logp.argmax(dim=1) == target).sum(0)
        sums[-1] += len(yb)
    totals = accelerator.reduce(sums, "sum").tolist()  # (losses, corrects, images)
    n = totals[-1]
    return [(totals[i] / n, 100.0 * totals[count + i] / n) for i in range(count)]


def seed_log_probs(logp: torch.Tensor) -> torch.Tensor:
    """(B, N, 10) log-probabilities: a pack's output as it is, one net's (B, 10) as N=1."""
    return logp if logp.dim() == 3 else logp.unsqueeze(1)


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
