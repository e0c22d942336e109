"""The hot loop's whole body: one optimizer step of one seed, or of a pack of seeds.

The trainer's loop and ``mnist-dist bench`` both call these, so what bench times is what
training runs. No host sync in here: the running sums stay on the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import TrainConfig


def seed_update(model, optimizer, accelerator, xb, yb, cfg: TrainConfig, sums) -> None:
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


def pack_update(model, optimizer, accelerator, x, y, cfg: TrainConfig, sums,
                      active: list[int] | None = None) -> None:  # fmt: skip
    """One step of every seed: the loss is the sum of each seed's mean loss, so each seed's
    gradient is its separate run's. ``sums`` (N, 2) gathers (loss * batch, correct).
    ``active``: the seeds still training (None: all); a stopped seed's loss is left out."""
    x = x.to(next(model.parameters()).dtype)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    logp = model(x).transpose(1, 2)  # (B, 10, N): the class dim second, as the losses want
    if cfg.label_smoothing:
        per = F.cross_entropy(logp, y, reduction="none", label_smoothing=cfg.label_smoothing)
    else:
        per = F.nll_loss(logp, y, reduction="none")  # (B, N)
    optimizer.zero_grad(set_to_none=True)
    kept = per if active is None else per[:, active]
    accelerator.backward(kept.mean(dim=0).sum())
    optimizer.step()
    sums[:, 0] += per.detach().double().sum(dim=0)
    sums[:, 1] += (logp.argmax(dim=1) == y).sum(dim=0)
