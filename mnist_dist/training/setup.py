"""Everything before the first epoch: the run folder, Accelerate, the data, the nets, the
optimizer and scheduler, the EMA; and ``Run``, the state the epoch loop carries.

``Run`` serves one seed (the plain net, alone or over DDP processes) and ``PackRun``
(``training.packed``) a pack of seeds as one grouped net: the same setup, loop, scoring,
checkpoint writer and result writer; a subclass only says how its nets are built, how
its state is saved and restored, and how each seed's result is written.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from ..config import Runtime, TrainConfig
from ..data import Augment, TrainBatches, load_mnist
from ..errors import UserError
from ..fsio import write_json
from ..models import build_model, count_params
from ..rundir import (
    CHECKPOINT,
    CONFIG,
    RESULT,
    checkpoint_state,
    restore,
    result_config,
    save_checkpoint,
)
from .runinfo import cpu_threads, git_commit, make_result, run_env
from .tracking import Tracker
from .updates import seed_update

RUNNING = "running"  # a seed the loop still trains; the per-epoch hook may stop it


class Run:
    """One seed of one config, from setup to its result: what the epoch loop carries."""

    def __init__(self, cfgs: list[TrainConfig], rt: Runtime, folders: list[Path], ckpt):
        self.t_start, self.commit = time.perf_counter(), git_commit()  # HEAD may move later
        self.cfgs, self.rt, self.folders, self.cfg = cfgs, rt, folders, cfgs[0]
        torch.set_num_threads(cpu_threads(rt.threads))
        acc = self.accelerator = make_accelerator(self.cfg, rt)
        if acc.is_main_process:
            for c, folder in zip(cfgs, folders, strict=True):
                write_json(folder / CONFIG, c.to_dict())
        with acc.main_process_first():  # only rank 0 may download
            self.data = load_mnist(rt.data_dir, rt.download).to(acc.device)
        self.batches = []  # each seed its own permutation and augmentation, as a lone run
        for c in cfgs:
            _, self.val, batches = load_data(c, rt, acc, self.data)
            self.batches.append(batches)
        self.nets = [build_net(c, rt.float64) for c in cfgs]  # each seed's own init
        self.net = self.build(self.nets)
        self.optimizer, self.scheduler, self.per_batch = build_optim(
            self.net, self.cfg, len(self.batches[0])
        )
        self.ema = make_ema(self.net, self.cfg)
        self.states = [RUNNING] * len(cfgs)  # a pack's restore may say otherwise
        self.histories, self.wall_before = self.restore(ckpt)
        self.model, self.optimizer = acc.prepare(self.net, self.optimizer)
        if self.cfg.compile:
            self.model = compile_model(self.model, acc.device)
        self.trackers = [Tracker.start(c, rt, f, acc.is_main_process) for c, f in self.seeds()]
        for tracker, history in zip(self.trackers, self.histories, strict=True):
            tracker.catch_up(history)  # epochs saved before a preemption W&B never received
        self.probe = DtypeProbe(self.net)
        acc.print(self.banner())

    def seeds(self) -> list[tuple[TrainConfig, Path]]:
        return list(zip(self.cfgs, self.folders, strict=True))

    def wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.t_start

    # ---- what a pack does differently (training.packed.PackRun) ----------------------

    def build(self, nets: list[torch.nn.Module]) -> torch.nn.Module:
        return nets[0].to(self.accelerator.device)

    def feed(self, epoch: int):
        """The epoch's batches: (x (B, 1, 28, 28), y (B,)) for one seed."""
        return self.batches[0].epoch(epoch)

    def step(self, x, y, sums, active: list[int]) -> None:
        seed_update(self.model, self.optimizer, self.accelerator, x, y, self.cfg, sums[0])

    def restore(self, ckpt) -> tuple[list[list[dict]], float]:
        parts = (self.net, self.optimizer, self.scheduler, self.accelerator)
        history, wall = restore(ckpt, *parts, self.folders[0], self.ema)
        return [history], wall

    def save(self) -> None:
        """The checkpoint of the epoch just trained (main process only)."""
        parts = (self.net, self.optimizer, self.scheduler, self.accelerator, self.histories[0])
        state = checkpoint_state(*parts, self.cfg, self.wall(), self.ema)
        save_checkpoint(self.folders[0] / CHECKPOINT, state)

    def finish(self, n: int, facts: dict[str, Any]) -> dict[str, Any]:
        """Seed n's result.json (main process): the checkpoint is the last save's."""
        return self.write_result(n, facts)

    # ---- shared ------------------------------------------------------------------------

    def title(self) -> str:
        return f"{self.cfg.step}: {count_params(self.nets[0]):,} params"

    def banner(self) -> str:
        acc = self.accelerator
        return (
            f"{self.title()}, "
            f"{len(self.batches[0].x):,} train images, world {acc.num_processes}, "
            f"{acc.device}, mixed precision {self.cfg.mixed_precision}, "
            f"{torch.get_num_threads()} threads"
        )

    def run_facts(self) -> dict[str, Any]:
        """Where and how the run ran (a collective: every rank calls it)."""
        env = run_env(self.accelerator, self.rt)
        # data_device: where the batches are drawn and augmented (the GPU check reads it)
        return dict(env, compute_dtype=self.probe.dtype, git_commit=self.commit,
                    data_device=str(self.batches[0].x.device))  # fmt: skip

    def write_result(self, n: int, run: dict[str, Any]) -> dict[str, Any]:
        """Seed n's result dict, written as result.json by the main process. A seed the
        per-epoch hook stopped keeps its state there and no checkpoint: its weights are
        not the recipe's."""
        cfg, folder, state = self.cfgs[n], self.folders[n], self.states[n]
        result = make_result(
            cfg,
            self.histories[n],
            params=count_params(self.nets[n]),
            n_train=len(self.batches[n].x),
            n_test=len(self.data.test_x) if cfg.test_eval != "never" else 0,
            wall_seconds=self.wall(),
            run=run,
            state="done" if state == RUNNING else state,
        )
        if self.accelerator.is_main_process:  # local results first: W&B may be slow or broken
            write_json(folder / RESULT, result)
            if state != RUNNING:
                (folder / CHECKPOINT).unlink(missing_ok=True)
            line = f"{seed_prefix(self, n)}{final_line(result, cfg)}  -> {folder / RESULT}"
            self.accelerator.print(line)
        self.trackers[n].finish(result)
        return result


def seed_prefix(run: Run, n: int) -> str:
    """The "seed 3: " before a pack's lines; nothing before a lone seed's."""
    return f"seed {run.cfgs[n].seed}: " if len(run.cfgs) > 1 else ""


def final_line(result: dict[str, Any], cfg: TrainConfig) -> str:
    if result["state"] != "done":
        return f"{result['state']} after epoch {len(result['history'])}"
    final = result["final_test_acc"] if cfg.test_eval != "never" else result["final_val_acc"]
    what = "test" if cfg.test_eval != "never" else "validation"
    # --test-eval never without --val-split scores nothing (a timing run): say so.
    return f"final {what} accuracy {final:.2f}%" if final is not None else "nothing scored"


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
    if not rt.resume and (out / CHECKPOINT).is_file():  # else its config would be overwritten
        raise UserError(
            f"{out} holds an unfinished run (checkpoint.pt, no result.json); pass --resume "
            "to continue it, or choose a new --out"
        )
    return out


def finished_result(out: Path, cfg: TrainConfig) -> dict:
    """``--resume`` of a finished run: its result, after checking it is this config's."""
    result = json.loads((out / RESULT).read_text())
    if result_config(result).identity() != cfg.identity():
        raise UserError(f"{out} holds a different config's result; use a new --out")
    print(f"{out} is already complete; nothing to do")
    return result


# A collective that waits longer than this (minutes) raises: a lost rank ends the trial
# instead of holding the others until the job's time limit (gloo's default is 30 min). On
# SLURM, srun --kill-on-bad-exit ends it sooner; this also covers rank 0's first download
# of MNIST (11 MB), which the other ranks wait for.
COLLECTIVE_TIMEOUT_MIN = 10


def make_accelerator(cfg: TrainConfig, rt: Runtime):
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    if cfg.mixed_precision == "fp16" and (rt.cpu or not torch.cuda.is_available()):
        raise UserError("--mixed-precision fp16 needs a CUDA GPU; on CPU use bf16 or no")
    # cpu=True is also what makes Accelerate see torchrun's processes as MULTI_CPU (gloo).
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        cpu=rt.cpu or not torch.cuda.is_available(),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(minutes=COLLECTIVE_TIMEOUT_MIN))],
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
    net = build_model(cfg.step, **cfg.shape())
    net = net.double() if float64 else net
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
