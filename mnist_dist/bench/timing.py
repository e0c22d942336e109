"""The timed loops and the clock shared by every bench mode: the origin pipeline's update,
our trainer's update, and ``measure``, which interleaves them round by round."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from ..config import TrainConfig
from ..data import MEAN, STD, default_data_dir
from ..models import build_model
from ..training.setup import DtypeProbe, compile_model
from ..training.updates import seed_update

Timed = Callable[[], int]  # runs one optimizer update, returns the images it trained on
ITERS = 50  # default --iters: timed updates per round (--pack times a --window instead)


def origin_loader(data_dir: str | None, batch_size: int, workers: int, pin: bool):
    """The origin study's train pipeline: per-sample PIL transforms, a worker DataLoader."""
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.RandomApply([transforms.CenterCrop(22)], p=0.1),
            transforms.Resize((28, 28)),
            transforms.RandomRotation((-15.0, 15.0), fill=0),
            transforms.ToTensor(),
            transforms.Normalize((MEAN,), (STD,)),
        ]
    )
    root = str(default_data_dir(data_dir))
    ds = datasets.MNIST(root=root, train=True, download=False, transform=tf)
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=True, num_workers=workers, pin_memory=pin
    )


def forever(epochs: Callable[[int], Iterator]) -> Iterator:
    """Chain epoch 0, 1, 2, ... of a batch source (short runs on tiny data wrap around)."""
    epoch = 0
    while True:
        yield from epochs(epoch)
        epoch += 1


def origin_loop(step: str, loader, device, lr: float) -> Timed:
    torch.manual_seed(0)
    model = build_model(step).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    batches = forever(lambda _: iter(loader))

    def run() -> int:
        xb, yb = next(batches)
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        F.nll_loss(model(xb), yb).backward()
        opt.step()
        return len(yb)

    return run


def our_loop(
    step, accelerator, batches: Iterator, lr, channels_last, compile_, fixed=False, bf16=False
):
    """the trainer's hot-loop update (``seed_update``) on ``batches`` (or one fixed batch).
    ``bf16``: the forward under bf16 autocast (``bf16_forward``); ``run.compute_dtype``: what
    the first convolution computed in."""
    cfg = TrainConfig(step=step, channels_last=channels_last).resolve()
    torch.manual_seed(0)
    net = build_model(step)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    model, opt = accelerator.prepare(net.to(accelerator.device), opt)
    if bf16:
        bf16_forward(model, accelerator.device)
    first = next(batches)
    probe = DtypeProbe(net)
    with torch.no_grad():
        model(first[0].contiguous(memory_format=torch.channels_last) if channels_last else first[0])
    probe.remove()
    if compile_:
        model = compile_model(model, accelerator.device)
    model.train()
    sums = torch.zeros(2, device=accelerator.device)  # on-device running sums, as the trainer

    def run() -> int:
        xb, yb = first if fixed else next(batches)
        seed_update(model, opt, accelerator, xb, yb, cfg, sums)
        return len(yb)

    run.compute_dtype = probe.dtype
    return run


def bf16_forward(model, device: torch.device) -> None:
    """The forward under bf16 autocast, outputs back in fp32, as ``Accelerator(
    mixed_precision="bf16")`` prepares it: one process holds one Accelerator state, so a
    bench that times fp32 and bf16 side by side applies it to each bf16 model itself."""
    from accelerate.utils import convert_outputs_to_fp32

    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    model.forward = convert_outputs_to_fp32(autocast(model.forward))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(loops: dict[str, Timed], device, n: int, warmup: int, repeats: int) -> dict:
    """Median over ``repeats`` interleaved rounds of ``n`` timed updates, after warm-up."""
    for run in loops.values():  # first warm-up: worker start, compilation, allocator
        for _ in range(warmup):
            run()
    rounds: dict[str, list[tuple[float, int]]] = {name: [] for name in loops}
    for _ in range(repeats):
        for name, run in loops.items():
            # Re-warm: the origin's workers filled their prefetch queue (2 per worker)
            # while the others ran; draining it first keeps that idle work out of the clock.
            for _ in range(warmup):
                run()
            sync(device)
            t0 = time.perf_counter()
            images = sum(run() for _ in range(n))
            sync(device)
            rounds[name].append((time.perf_counter() - t0, images))
    out = {}
    for name, rs in rounds.items():
        ms = statistics.median(1000.0 * t / n for t, _ in rs)
        per_step = sum(i for _, i in rs) / (n * len(rs))  # images per step (last batch short)
        out[name] = dict(
            ms_per_step=ms,
            images_per_s=per_step * 1000.0 / ms,
            rounds_ms=[round(1000.0 * t / n, 3) for t, _ in rs],
        )
    return out
