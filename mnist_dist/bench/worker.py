"""One process of ``mnist-dist bench --pack``: it times the trainer's own step on command.

    python -m mnist_dist.bench.worker     # started by bench/pack.py, not by hand

It reads one JSON command per line on stdin and answers each with one JSON line on stdout
(whatever else it prints goes to stderr):

    {"op": "init", "index": 0, "data_dir": null, "batch_size": null, "channels_last": true}
    {"op": "warm", "step": "step4", "precision": "bf16", "pack": 8, "threads": 1, "warmup": 5}
      -> {"timed": "mnist_dist.training.updates.pack_update", "conv_groups": [8],
          "compute_dtype": "bfloat16"}
    {"op": "run", "until": 1234.5}    # a time.monotonic() deadline, shared by the processes
      -> {"images": 4096, "steps": 8, "seconds": 5.02}  (images: seed-images)

``warm`` builds a loop once per (step, precision, pack), from the trainer's own parts, then
runs ``warmup`` untimed steps at ``threads`` torch threads. ``pack`` 0 is a separate run:
``training.updates.seed_update`` on one seed's ``TrainBatches``. ``pack`` N is the packed
trainer's update, ``training.updates.pack_update``, on ``pack_model``'s grouped network
of N seeds, fed by ``training.packed.packed_batches`` (one batch of each seed,
concatenated on dim 1) as the trainer's loop feeds it. Worker i trains seeds i*N ..
i*N+N-1 (a separate run: seed i), so side by side processes never train the same seed. A
per-batch scheduler step (OneCycle) and an EMA update are left out of both kinds of loop
alike.
``run`` times steps until the deadline (at least one): the last step may end after it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..config import Runtime, TrainConfig
from ..data import MNISTData, load_mnist
from ..errors import UserError
from ..training import packed, updates
from ..training import setup as trainer
from .timing import bf16_forward, forever


@dataclass
class Loop:
    run: Callable[[], int]  # one training step; returns the seed-images it trained on
    model: nn.Module  # the network (packed or plain) whose parameters the step updates
    timed: str  # the step function it calls, module.name
    compute_dtype: str | None = None  # what the first convolution computed in


def build_loop(step: str, precision: str, pack: int, first_seed: int, data: MNISTData,
               accelerator, batch_size: int | None = None, channels_last: bool = True,
               ) -> Loop:  # fmt: skip
    """One seed's separate run (``pack`` 0) or a pack of ``pack`` seeds from ``first_seed``,
    set up as the trainer sets them up (``training.setup``, ``packed.build_pack``), on
    ``data`` (on the device)."""
    base = TrainConfig(step=step, batch_size=batch_size, channels_last=channels_last).resolve()
    cfgs = [dataclasses.replace(base, seed=first_seed + n) for n in range(max(pack, 1))]
    rt = Runtime(cpu=accelerator.device.type == "cpu")
    batches = [trainer.load_data(c, rt, accelerator, data)[2] for c in cfgs]
    nets = [trainer.build_net(c) for c in cfgs]  # each seed's init, as its own run
    if pack:
        net = packed.build_pack(nets, base, accelerator.device)
    else:
        net = nets[0].to(accelerator.device)
    optimizer, _, _ = trainer.build_optim(net, base, len(batches[0]))
    model, optimizer = accelerator.prepare(net, optimizer)
    if precision == "bf16":
        bf16_forward(model, accelerator.device)
    model.train()
    count = (pack, 2) if pack else (2,)
    sums = torch.zeros(*count, device=accelerator.device, dtype=torch.float64)
    if pack:
        step_fn = updates.pack_update
        feed = forever(lambda epoch: packed.packed_batches(batches, epoch))
    else:
        step_fn, feed = updates.seed_update, forever(batches[0].epoch)
    cfg = cfgs[0]

    def run() -> int:
        x, y = next(feed)
        step_fn(model, optimizer, accelerator, x, y, cfg, sums)
        return y.numel()  # (B,) or (B, N): seed-images

    return Loop(run, net, f"{step_fn.__module__}.{step_fn.__name__}")


class Worker:
    """The loops of one process, built on first use and kept warm across rounds."""

    def __init__(self, index: int, data_dir: str | None, batch_size: int | None,
                 channels_last: bool):  # fmt: skip
        from accelerate import Accelerator

        self.index, self.batch_size, self.channels_last = index, batch_size, channels_last
        self.accelerator = Accelerator(mixed_precision="no", cpu=True)  # bf16: bf16_forward
        self.data = load_mnist(data_dir, download=False).to(self.accelerator.device)
        self.loops: dict[tuple, Loop] = {}
        self.loop: Loop | None = None

    def warm(self, step: str, precision: str, pack: int, threads: int, warmup: int) -> dict:
        torch.set_num_threads(threads)
        key = (step, precision, pack)
        if key not in self.loops:
            first = self.index * max(pack, 1)
            loop = build_loop(step, precision, pack, first, self.data, self.accelerator,
                              self.batch_size, self.channels_last)  # fmt: skip
            probe = trainer.DtypeProbe(loop.model)
            loop.run()  # the first step: allocator, one-time setup
            probe.remove()
            loop.compute_dtype = probe.dtype
            self.loops[key] = loop
        self.loop = self.loops[key]
        for _ in range(warmup):
            self.loop.run()
        groups = {m.groups for m in self.loop.model.modules() if isinstance(m, nn.Conv2d)}
        return dict(timed=self.loop.timed, conv_groups=sorted(groups),
                    compute_dtype=self.loop.compute_dtype)  # fmt: skip

    def run(self, until: float) -> dict:
        """Steps of the warmed loop until ``until`` (time.monotonic), at least one."""
        images = steps = 0
        t0 = time.monotonic()
        while True:
            images += self.loop.run()
            steps += 1
            if time.monotonic() >= until:
                break
        return dict(images=images, steps=steps, seconds=time.monotonic() - t0)


def answer(worker: Worker | None, msg: dict) -> tuple[Worker | None, dict]:
    op = msg.pop("op")
    if op == "init":
        return Worker(**msg), {}
    if worker is None:
        raise UserError(f"bench worker: {op!r} before init")
    if op == "warm":
        return worker, worker.warm(**msg)
    if op == "run":
        return worker, worker.run(**msg)
    raise UserError(f"bench worker: unknown command {op!r}")


def main() -> None:
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # prints (torch, Accelerate) go to stderr: stdout carries the replies only
    worker = None
    try:
        for line in iter(sys.stdin.readline, ""):
            try:
                worker, reply = answer(worker, json.loads(line))
            except UserError as e:
                reply = dict(error=str(e))
            except Exception as e:  # a bug: its traceback on stderr, one line to the parent
                traceback.print_exc()
                reply = dict(error=f"{type(e).__name__}: {e} (traceback above)")
            replies.write(json.dumps(reply) + "\n")
            if "error" in reply:
                sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent reports
        sys.exit(130)


if __name__ == "__main__":
    main()
