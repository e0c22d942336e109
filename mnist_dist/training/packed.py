"""Train N seeds of one config at once: one grouped network, one forward and backward.

    mnist-dist train --step step5 --seeds 0-7 --out runs/s5
    mnist-dist train --step step5 --seeds 0-7 --out runs/s5 --resume

Each seed's run is its separate run's (``packnet``): the same initial weights (set_seed,
then the model), its own batches (permutation, augmentation, short last batch), a loss
that is the sum of each seed's mean loss, so that each seed's gradient and elementwise
update (SGD, Nesterov, AdamW, EMA) are its own. Only float reduction order differs, as with
another thread count. ``--out`` is a parent folder holding one normal run folder per seed
(``<out>/<trial id>/``) and the pack's own resume state in ``<out>/.packs/``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..config import Runtime, TrainConfig
from ..data import eval_batches, load_mnist
from ..errors import UserError
from ..fsio import write_json
from ..models import count_params
from ..rundir import CHECKPOINT, CONFIG, RESULT, read_checkpoint, save_checkpoint
from .loop import (
    PROGRESS_EVERY_S,
    DtypeProbe,
    build_net,
    build_optim,
    compile_model,
    epoch_line,
    finished_result,
    load_data,
    make_accelerator,
    make_ema,
    run_folder,
    train,
)
from .packnet import load_seed, pack_model, seed_optimizer_state, seed_state
from .runinfo import cpu_threads, git_commit, make_result, run_env
from .tracking import Tracker

PACKS = ".packs"  # <out>/.packs/<config hash>-s<seeds>.pt: not a run folder, never a trial


def train_seeds(cfg: TrainConfig, rt: Runtime) -> dict[int, dict]:
    """Train ``rt.seeds`` of ``cfg``; {seed: result}. Seeds already finished are kept with
    --resume (and refused without it); a single seed left takes the plain path."""
    base, parent = cfg.resolve(), Path(rt.out or "runs")
    cfgs = {s: dataclasses.replace(base, seed=s) for s in rt.seeds}
    folders = {s: parent / c.trial_id() for s, c in cfgs.items()}
    for s, c in cfgs.items():
        run_folder(c, dataclasses.replace(rt, out=str(folders[s])))  # refuses a finished run
    results = {s: finished_result(folders[s], c) for s, c in cfgs.items()
               if (folders[s] / RESULT).is_file()}  # fmt: skip
    todo = [s for s in rt.seeds if s not in results]
    if len(todo) == 1:  # one seed: today's plain path and checkpoint, bit for bit
        s = todo[0]
        results[s] = train(cfgs[s], dataclasses.replace(rt, out=str(folders[s]), seeds=None))
    elif todo:
        results.update(train_pack([cfgs[s] for s in todo], rt, parent, folders))
    return results


def check_packable(cfg: TrainConfig) -> None:
    if cfg.world_size > 1:
        raise UserError(
            "--seeds packs seeds in one process; it cannot also run over "
            f"{cfg.world_size} processes (drop torchrun, or train one seed)"
        )
    if cfg.mixed_precision == "fp16":
        raise UserError(
            "--seeds refuses fp16: its one loss scale would let one seed's "
            "overflow skip every seed's step; use bf16 or no"
        )


def train_pack(cfgs: list[TrainConfig], rt: Runtime, parent: Path, folders) -> dict[int, dict]:
    """The packed run of ``cfgs`` (one config, several seeds); {seed: result}."""
    base, seeds = cfgs[0], [c.seed for c in cfgs]
    check_packable(base)
    state_path = parent / PACKS / f"{base.config_hash()}-s{'_'.join(map(str, seeds))}.pt"
    commit, t_start = git_commit(), time.perf_counter()
    ckpt = load_pack_state(state_path, base, seeds) if rt.resume else None
    torch.set_num_threads(cpu_threads(rt.threads))
    accelerator = make_accelerator(base, rt)
    for c in cfgs:
        write_json(folders[c.seed] / CONFIG, c.to_dict())
    with accelerator.main_process_first():
        data = load_mnist(rt.data_dir, rt.download).to(accelerator.device)
    val, batches = None, []
    for c in cfgs:  # each seed its own permutation and augmentation, as its separate run
        _, val, b = load_data(c, rt, accelerator, data)
        batches.append(b)
    nets = [build_net(c, rt.float64) for c in cfgs]  # each seed's init, as its separate run
    pack = pack_model(nets[0], len(cfgs))
    pack = pack.double() if rt.float64 else pack
    for n, net in enumerate(nets):
        load_seed(pack, n, net.state_dict(), len(cfgs))
    pack = pack.to(accelerator.device, memory_format=torch.channels_last if base.channels_last
                   else torch.preserve_format)  # fmt: skip
    optimizer, scheduler, per_batch = build_optim(pack, base, len(batches[0]))
    ema = make_ema(pack, base)
    histories, wall_before = restore_pack(ckpt, pack, optimizer, scheduler, ema, seeds)
    model, optimizer = accelerator.prepare(pack, optimizer)
    if base.compile:
        model = compile_model(model, accelerator.device)
    probe = DtypeProbe(pack)
    trackers = {c.seed: Tracker.start(c, rt, folders[c.seed]) for c in cfgs}
    for s, tracker in trackers.items():
        tracker.catch_up(histories[s])
    threads = torch.get_num_threads()
    accelerator.print(
        f"{base.label()}: seeds {seeds} packed as one grouped net, "
        f"{count_params(nets[0]):,} params each, {threads} threads"
    )
    for epoch in range(len(histories[seeds[0]]), base.epochs):
        sched = (scheduler, per_batch, ema)
        train_rows = run_pack_epoch(epoch, model, optimizer, sched, batches, base, rt, accelerator)
        t_eval = time.perf_counter()
        scores = score_pack(model, ema, data, val, base, len(seeds), epoch + 1 == base.epochs)
        for n, s in enumerate(seeds):
            row = dict(epoch=epoch + 1, **train_rows[n], **scores[n])
            row["eval_seconds"] = time.perf_counter() - t_eval
            histories[s].append(row)
            accelerator.print(f"seed {s}: " + epoch_line(row, base), flush=True)
        wall = wall_before + time.perf_counter() - t_start
        state = dict(
            seeds=seeds, config=base.to_dict(), epoch=epoch + 1, histories=histories,
            model=pack.state_dict(), optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(), rng=torch.get_rng_state(),
            ema=ema.state_dict() if ema is not None else None, wall_seconds=wall,
        )  # fmt: skip
        save_checkpoint(state_path, state)
        for s in seeds:
            trackers[s].log(histories[s][-1])
    probe.remove()
    wall = wall_before + time.perf_counter() - t_start
    env = dict(run_env(accelerator, rt), compute_dtype=probe.dtype, git_commit=commit,
               train_images=len(batches[0].x), test_images=len(data.test_x))  # fmt: skip
    results = {}
    for n, c in enumerate(cfgs):
        opt = (optimizer, scheduler)
        results[c.seed] = finish_seed(c, n, nets[n], pack, ema, opt, histories[c.seed], seeds,
                                      env, wall, folders[c.seed])  # fmt: skip
        trackers[c.seed].finish(results[c.seed])
    accelerator.end_training()
    return results


def finish_seed(cfg, n, net, pack, ema, opt, history, seeds, env, wall, folder) -> dict:
    """Seed n's standard checkpoint and result.json, cut out of the pack: the checkpoint
    is the one its separate run would have written (model, optimizer, scheduler, EMA)."""
    like, count = net.state_dict(), len(seeds)
    model = seed_state(pack.state_dict(), like, n, count)
    optimizer, scheduler = opt
    opt_state = seed_optimizer_state(optimizer.state_dict(), list(net.parameters()), n, count)
    ema_state = None
    if ema is not None:
        ema_like = {f"module.{k}": v for k, v in like.items()} | {"n_averaged": ema.n_averaged}
        ema_state = seed_state(ema.state_dict(), ema_like, n, count)
    state = dict(epoch=len(history), model=model, optimizer=opt_state,
                 scheduler=scheduler.state_dict(), scaler=None, ema=ema_state,
                 rng=torch.get_rng_state(), cuda_rng=None, history=history,
                 config=cfg.to_dict(), world_size=1, wall_seconds=wall)  # fmt: skip
    save_checkpoint(folder / CHECKPOINT, state)
    env = dict(env)
    n_train, n_test = env.pop("train_images"), env.pop("test_images")
    timing = (f"pack of {count} seeds: seconds, images_per_s (seed-images/s) and wall time "
              "are the whole pack's")  # fmt: skip
    run = dict(env, packed_with=[s for s in seeds if s != cfg.seed], timing=timing)
    n_test = n_test if cfg.test_eval != "never" else 0
    result = make_result(cfg, history, params=count_params(net), n_train=n_train, n_test=n_test,
                         wall_seconds=wall, run=run)  # fmt: skip
    write_json(folder / RESULT, result)
    print(f"seed {cfg.seed}: final test accuracy {result['final_test_acc']}  -> {folder}")
    return result


def load_pack_state(path: Path, cfg: TrainConfig, seeds: list[int]) -> dict[str, Any] | None:
    """The pack's resume state, if it is this config's and these seeds'."""
    if not path.is_file():
        return None
    state = read_checkpoint(path, fix="move it away to start these seeds over")
    if TrainConfig.from_dict(state["config"]).identity() != cfg.identity():
        raise UserError(f"{path} was written by a different config; use a new --out")
    return state if state["seeds"] == seeds else None


def restore_pack(ckpt, pack, optimizer, scheduler, ema, seeds) -> tuple[dict, float]:
    if not ckpt:
        return {s: [] for s in seeds}, 0.0
    pack.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if ema is not None:
        ema.load_state_dict(ckpt["ema"])
    torch.set_rng_state(ckpt["rng"])
    print(f"resuming seeds {seeds} after epoch {ckpt['epoch']}")
    return ckpt["histories"], float(ckpt["wall_seconds"])


def run_pack_epoch(epoch, model, optimizer, sched, batches, cfg, rt, accelerator) -> list[dict]:
    """One epoch of every seed; per seed, the row's training half. Timing is the pack's."""
    scheduler, per_batch, ema = sched
    model.train()
    lr, count = optimizer.param_groups[0]["lr"], len(batches)
    sums = torch.zeros(count, 2, device=accelerator.device, dtype=torch.float64)  # per seed
    seen, t0, last_line = 0, time.perf_counter(), time.perf_counter()
    for i, (x, y) in enumerate(packed_batches(batches, epoch), 1):
        packed_train_step(model, optimizer, accelerator, x, y, cfg, sums)
        if ema is not None:
            ema.update_parameters(accelerator.unwrap_model(model))
        if per_batch:
            scheduler.step()
        seen += len(y)
        if rt.progress and time.perf_counter() - last_line > PROGRESS_EVERY_S:
            last_line = time.perf_counter()
            print(f"  epoch {epoch + 1} step {i}/{len(batches[0])}  "
                  f"{seen * count / (last_line - t0):,.0f} seed-img/s", flush=True)  # fmt: skip
    if not per_batch:
        scheduler.step()
    sums = sums.tolist()
    seconds = time.perf_counter() - t0
    return [
        dict(
            train_loss=lo / seen,
            train_acc=100.0 * c / seen,
            lr=lr,
            seconds=seconds,
            images_per_s=seen * count / seconds,
        )  # fmt: skip
        for lo, c in sums
    ]


def packed_batches(batches, epoch: int):
    """Per step, one batch of each seed at the same position: x (B, N, 28, 28) with seed n's
    images in channel n, and y (B, N). The feed of ``run_pack_epoch`` (and of ``mnist-dist
    bench --pack``, which times this trainer's own packed step)."""
    for pairs in zip(*(b.epoch(epoch) for b in batches), strict=True):
        x = torch.cat([xb for xb, _ in pairs], dim=1)
        yield x, torch.stack([yb for _, yb in pairs], dim=1)


def packed_train_step(model, optimizer, accelerator, x, y, cfg: TrainConfig, sums) -> None:
    """One step of every seed: the loss is the sum of each seed's mean loss, so each seed's
    gradient is its separate run's. ``sums`` (N, 2) gathers (loss * batch, correct)."""
    x = x.to(next(model.parameters()).dtype)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    logp = model(x).transpose(1, 2)  # (B, 10, N): the class dim second, as the losses want
    if cfg.label_smoothing:
        per = F.cross_entropy(logp, y, reduction="none", label_smoothing=cfg.label_smoothing)
    else:
        per = F.nll_loss(logp, y, reduction="none")  # (B, N)
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(per.mean(dim=0).sum())
    optimizer.step()
    sums[:, 0] += per.detach().double().sum(dim=0)
    sums[:, 1] += (logp.argmax(dim=1) == y).sum(dim=0)


def score_pack(model, ema, data, val, cfg: TrainConfig, count: int, last: bool) -> list[dict]:
    """Per seed, ``train.score``'s row: each seed on the same images its separate run sees."""
    sets = [("val", *val)] if val else []
    if cfg.test_eval == "every" or (cfg.test_eval == "final" and last):
        sets.insert(0, ("test", data.test_x, data.test_y))
    weights = [("model", model)] + ([("ema", ema.module)] if ema is not None else [])
    rows: list[dict[str, float]] = [{} for _ in range(count)]
    for name, x, y in sets:
        for which, net in weights:
            for n, (loss, acc) in enumerate(evaluate_pack(net, x, y, cfg, count)):
                if ema is not None:
                    rows[n][f"{which}_{name}_loss"], rows[n][f"{which}_{name}_acc"] = loss, acc
                if which == cfg.headline:
                    rows[n][f"{name}_loss"], rows[n][f"{name}_acc"] = loss, acc
    return rows


@torch.no_grad()
def evaluate_pack(model, x, y, cfg: TrainConfig, count: int) -> list[tuple[float, float]]:
    """(loss, accuracy %) per seed over all of (x, y). Batches of eval_batch_size / N
    images keep memory bounded as N grows (the packed activations are N times wider)."""
    model.eval()
    dtype = next(model.parameters()).dtype
    sums = torch.zeros(count, 2, dtype=torch.float64, device=x.device)
    for xb, yb in eval_batches(x, y, max(1, cfg.eval_batch_size // count)):
        xb = xb.to(dtype).expand(-1, count, -1, -1)  # every seed sees the same images
        with torch.autocast(xb.device.type, torch.bfloat16, enabled=cfg.mixed_precision == "bf16"):
            logp = model(xb.contiguous()).double().transpose(1, 2)  # (b, 10, N)
        sums[:, 0] += F.nll_loss(logp, yb[:, None].expand(-1, count), reduction="none").sum(0)
        sums[:, 1] += (logp.argmax(dim=1) == yb[:, None]).sum(0)
    return [(lo / len(y), 100.0 * c / len(y)) for lo, c in sums.tolist()]
