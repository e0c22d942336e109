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
from pathlib import Path
from typing import Any

import torch

from ..config import Runtime, TrainConfig
from ..errors import UserError
from ..models import count_params
from ..rundir import CHECKPOINT, RESULT, read_checkpoint, save_checkpoint, trial_locks
from .loop import EpochHook, fit, go_on, train
from .packnet import load_seed, pack_model, seed_optimizer_state, seed_state
from .setup import RUNNING, Run, finished_result, run_folder
from .updates import pack_update

PACKS = ".packs"  # <out>/.packs/<config hash>-s<seeds>.pt: not a run folder, never a trial


def train_seeds(cfg: TrainConfig, rt: Runtime, on_epoch: EpochHook = go_on) -> dict[int, dict]:
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
    for pack, state_path in list(unfinished_packs(parent, base, todo)):
        done = resume_pack(base, rt, pack, parent, state_path, on_epoch)
        results.update((s, r) for s, r in done.items() if s in cfgs)
        todo = [s for s in todo if s not in pack]
    if len(todo) == 1:  # one seed: the plain path and checkpoint, bit for bit
        s = todo[0]
        one = dataclasses.replace(rt, out=str(folders[s]), seeds=None)
        results[s] = train(cfgs[s], one, on_epoch)
    elif todo:
        state_path = parent / PACKS / f"{base.config_hash()}-s{'_'.join(map(str, todo))}.pt"
        results.update(resume_pack(base, rt, todo, parent, state_path, on_epoch))
    return results


def unfinished_packs(parent: Path, cfg: TrainConfig, todo: list[int]):
    """(seeds, state path) of each pack state of this config that holds a seed of ``todo``
    and whose other seeds are finished: a pack killed while it wrote its seeds' results
    (after its last save) names more seeds than are left, and resumes to finish the rest
    rather than train them again."""
    for path in sorted((parent / PACKS).glob(f"{cfg.config_hash()}-s*.pt")):
        seeds = [int(s) for s in path.stem.rsplit("-s", 1)[1].split("_")]
        done = [s for s in seeds if s not in todo]
        if len(done) < len(seeds) and all(
            (parent / dataclasses.replace(cfg, seed=s).trial_id() / RESULT).is_file() for s in done
        ):
            yield seeds, path


def resume_pack(base, rt, seeds, parent, state_path, on_epoch) -> dict[int, dict]:
    """Train (or, with --resume, continue) the pack of ``seeds``; {seed: result}."""
    check_packable(base)
    if not rt.resume and state_path.is_file():
        raise UserError(
            f"{state_path} holds these seeds' unfinished pack; pass --resume to continue "
            "it, or choose a new --out"
        )
    pack = [dataclasses.replace(base, seed=s) for s in seeds]
    folders = [parent / c.trial_id() for c in pack]
    with trial_locks(folders):
        ckpt = load_pack_state(state_path, base, seeds) if rt.resume else None
        run = PackRun(pack, rt, folders, ckpt, state_path)
        results = fit(run, on_epoch)
        state_path.unlink(missing_ok=True)  # every seed holds its result: nothing to resume
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


class PackRun(Run):
    """N seeds of one config as one grouped net (``packnet``): one forward and backward
    per step for all of them. Its resume state lives in ``<out>/.packs/``; each seed gets
    its standard checkpoint and result.json at the end, cut out of the pack."""

    def __init__(self, cfgs, rt, folders, ckpt, state_path: Path):
        self.state_path = state_path
        super().__init__(cfgs, rt, folders, ckpt)

    def build(self, nets):
        return build_pack(nets, self.cfg, self.accelerator.device, self.rt.float64)

    def feed(self, epoch: int):
        return packed_batches(self.batches, epoch)

    def step(self, x, y, sums, active: list[int]) -> None:
        pack_update(self.model, self.optimizer, self.accelerator, x, y, self.cfg, sums,
                          active if len(active) < len(self.cfgs) else None)  # fmt: skip

    def title(self) -> str:
        seeds, params = [c.seed for c in self.cfgs], count_params(self.nets[0])
        return (
            f"{self.cfg.label()}: seeds {seeds} packed as one grouped net, {params:,} params each"
        )

    def restore(self, ckpt) -> tuple[list[list[dict]], float]:
        seeds = [c.seed for c in self.cfgs]
        if not ckpt:
            return [[] for _ in seeds], 0.0
        self.net.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"])
        torch.set_rng_state(ckpt["rng"])
        self.states = list(ckpt.get("states") or self.states)
        print(f"resuming seeds {seeds} after epoch {ckpt['epoch']}")
        return [ckpt["histories"][s] for s in seeds], float(ckpt["wall_seconds"])

    def save(self) -> None:
        seeds = [c.seed for c in self.cfgs]
        state = dict(
            seeds=seeds, config=self.cfg.to_dict(), epoch=len(self.histories[0]),
            histories=dict(zip(seeds, self.histories, strict=True)), states=self.states,
            model=self.net.state_dict(), optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), rng=torch.get_rng_state(),
            ema=self.ema.state_dict() if self.ema is not None else None,
            wall_seconds=self.wall(),
        )  # fmt: skip
        save_checkpoint(self.state_path, state)

    def finish(self, n: int, facts: dict[str, Any]) -> dict[str, Any]:
        """Seed n's standard checkpoint, cut out of the pack (the one its separate run would
        have written: model, optimizer, scheduler, EMA), then its result.json. A seed the
        hook stopped gets no checkpoint (see ``Run.write_result``)."""
        count, cfg = len(self.cfgs), self.cfgs[n]
        if (self.folders[n] / RESULT).is_file():  # written before a kill in this finish
            result = finished_result(self.folders[n], cfg)
            self.trackers[n].finish(result)
            return result
        timing = (f"pack of {count} seeds: seconds, images_per_s (seed-images/s) and wall "
                  "time are the whole pack's")  # fmt: skip
        others = [c.seed for c in self.cfgs if c.seed != cfg.seed]
        facts = dict(facts, packed_with=others, timing=timing)
        if self.states[n] != RUNNING:
            return self.write_result(n, facts)
        like = self.nets[n].state_dict()
        ema_state = None
        if self.ema is not None:
            ema_like = {f"module.{k}": v for k, v in like.items()}
            ema_like["n_averaged"] = self.ema.n_averaged
            ema_state = seed_state(self.ema.state_dict(), ema_like, n, count)
        state = dict(
            epoch=len(self.histories[n]),
            model=seed_state(self.net.state_dict(), like, n, count),
            optimizer=seed_optimizer_state(self.optimizer.state_dict(),
                                           list(self.nets[n].parameters()), n, count),
            scheduler=self.scheduler.state_dict(), scaler=None, ema=ema_state,
            rng=torch.get_rng_state(), cuda_rng=None, history=self.histories[n],
            config=cfg.to_dict(), world_size=1, wall_seconds=self.wall(),
        )  # fmt: skip
        save_checkpoint(self.folders[n] / CHECKPOINT, state)
        return self.write_result(n, facts)


def build_pack(nets, cfg: TrainConfig, device, float64: bool = False) -> torch.nn.Module:
    """The seeds' nets as one grouped net on ``device``, each seed's own initial weights
    in its group (the trainer's setup, and bench's)."""
    pack = pack_model(nets[0], len(nets))
    pack = pack.double() if float64 else pack
    for n, net in enumerate(nets):
        load_seed(pack, n, net.state_dict(), len(nets))
    fmt = torch.channels_last if cfg.channels_last else torch.preserve_format
    return pack.to(device, memory_format=fmt)


def load_pack_state(path: Path, cfg: TrainConfig, seeds: list[int]) -> dict[str, Any] | None:
    """The pack's resume state, if it is this config's and these seeds'."""
    if not path.is_file():
        return None
    state = read_checkpoint(path, fix="move it away to start these seeds over")
    if TrainConfig.from_dict(state["config"]).identity() != cfg.identity():
        raise UserError(f"{path} was written by a different config; use a new --out")
    return state if state["seeds"] == seeds else None


def packed_batches(batches, epoch: int):
    """Per step, one batch of each seed at the same position: x (B, N, 28, 28) with seed n's
    images in channel n, and y (B, N). The feed of ``run_pack_epoch`` (and of ``mnist-dist
    bench --pack``, which times this trainer's own packed step)."""
    for pairs in zip(*(b.epoch(epoch) for b in batches), strict=True):
        x = torch.cat([xb for xb, _ in pairs], dim=1)
        yield x, torch.stack([yb for _, yb in pairs], dim=1)
