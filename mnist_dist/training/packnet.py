"""Seed packing: N copies of a step model, trained as one grouped network.

N networks that never interact are one network with grouped convolutions: seed n is
group n of every convolution (``groups=N``), BatchNorm is per channel anyway, and each seed
keeps its own head. The packed net maps (B, N, 28, 28), seed n's images in channel n, to
(B, N, 10) log-probabilities, each seed's log-softmax over its own 10 logits only.

``pack_model`` converts any registered step model; a module it does not know is a one-line
error naming it. ``load_seed`` / ``seed_state`` move one seed's weights in and out: every
packed tensor is either N seed tensors stacked along dim 0 (convolutions, BatchNorm) or
N seed tensors under a new leading dim (the grouped linear head), or one shared counter.
Pure modules and tensor moves: no I/O.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import UserError
from ..models import GAPLinear, LogSoftmaxHead

# Modules that act per channel (or per element) and so pack as they are.
PER_CHANNEL = (nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Identity)


class SeedLogSoftmax(nn.Module):
    """(B, N*10) logits -> (B, N, 10) log-probabilities, normalised within each seed."""

    def __init__(self, seeds: int):
        super().__init__()
        self.seeds = seeds

    def forward(self, x):
        return x.reshape(x.shape[0], self.seeds, -1).log_softmax(dim=-1)


class SeedLogSoftmaxHead(SeedLogSoftmax):
    """LogSoftmaxHead packed: global average pool, then per-seed log-softmax."""

    def forward(self, x):
        return super().forward(x.mean(dim=(2, 3)))


class GroupedLinear(nn.Module):
    """N independent linear layers: weight (N, out, in), bias (N, out)."""

    def __init__(self, seeds: int, inputs: int, outputs: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(seeds, outputs, inputs))
        self.bias = nn.Parameter(torch.empty(seeds, outputs))

    def forward(self, x):  # (B, N, in) -> (B, N, out)
        return torch.einsum("bni,noi->bno", x, self.weight) + self.bias


class SeedGAPLinear(nn.Module):
    """GAPLinear packed: (B, N*C, H, W) -> mean -> (B, N, C) -> per-seed linear -> (B, N, 10)."""

    def __init__(self, seeds: int, fc: nn.Linear):
        super().__init__()
        self.seeds = seeds
        self.fc = GroupedLinear(seeds, fc.in_features, fc.out_features)

    def forward(self, x):
        x = x.mean(dim=(2, 3)).reshape(x.shape[0], self.seeds, -1)
        return self.fc(x).log_softmax(dim=-1)


def pack_module(m: nn.Module, seeds: int) -> nn.Module:
    """The grouped form of one module (recursively for Sequential)."""
    if type(m) is nn.Sequential:
        return nn.Sequential(*(pack_module(c, seeds) for c in m))
    if type(m) is nn.Conv2d:
        return nn.Conv2d(
            m.in_channels * seeds, m.out_channels * seeds, m.kernel_size, m.stride, m.padding,
            m.dilation, groups=m.groups * seeds, bias=m.bias is not None,
            padding_mode=m.padding_mode,
        )  # fmt: skip
    if type(m) is nn.BatchNorm2d:
        return nn.BatchNorm2d(m.num_features * seeds, m.eps, m.momentum, m.affine,
                              m.track_running_stats)  # fmt: skip
    if type(m) in PER_CHANNEL or type(m) is nn.Flatten:  # no parameters: a copy
        return copy.deepcopy(m)
    if type(m) is nn.LogSoftmax and m.dim in (1, -1):
        return SeedLogSoftmax(seeds)
    if type(m) is LogSoftmaxHead:
        return SeedLogSoftmaxHead(seeds)
    if type(m) is GAPLinear:
        return SeedGAPLinear(seeds, m.fc)
    raise UserError(
        f"cannot pack seeds of a model holding {type(m).__name__}: the seed packer knows "
        "Conv2d, BatchNorm2d, ReLU, MaxPool2d, AdaptiveAvgPool2d, Flatten, Dropout and the "
        "step heads; train its seeds separately (--seed)"
    )


def pack_model(net: nn.Module, seeds: int) -> nn.Module:
    """A registered step model's grouped form for ``seeds`` seeds (weights uninitialised:
    fill each seed with ``load_seed``)."""
    return pack_module(net, seeds)


def _seed_view(packed: torch.Tensor, plain: torch.Tensor, n: int, seeds: int) -> torch.Tensor:
    """Seed n's part of a packed tensor, as a view (writable)."""
    if packed.shape == plain.shape:  # a shared counter (num_batches_tracked, n_averaged)
        return packed
    if packed.shape == (seeds, *plain.shape):  # the grouped linear head
        return packed[n]
    if packed.shape[0] == seeds * plain.shape[0] and packed.shape[1:] == plain.shape[1:]:
        size = plain.shape[0]
        return packed[n * size : (n + 1) * size]
    raise ValueError(f"packed shape {tuple(packed.shape)} does not hold {tuple(plain.shape)}")


@torch.no_grad()
def load_seed(pack: nn.Module, n: int, state: dict[str, torch.Tensor], seeds: int) -> None:
    """Copy one seed's plain state_dict into group n of the packed model."""
    packed = pack.state_dict()
    for key, value in state.items():
        _seed_view(packed[key], value, n, seeds).copy_(value)


@torch.no_grad()
def seed_state(packed: dict[str, torch.Tensor], like: dict[str, torch.Tensor], n: int,
               seeds: int) -> dict[str, torch.Tensor]:  # fmt: skip
    """Seed n's plain state_dict out of a packed one; ``like`` gives the plain keys/shapes."""
    return {k: _seed_view(packed[k], v, n, seeds).clone() for k, v in like.items()}


def seed_optimizer_state(packed: dict, plain_params: list[torch.Tensor], n: int,
                         seeds: int) -> dict:  # fmt: skip
    """Seed n's optimizer state_dict out of the pack's: parameter i of the pack is parameter
    i of the plain model (the trees mirror each other), and every per-parameter state
    (momentum, AdamW's moments; its shared step count) is sliced like the parameter."""
    state = {
        i: {k: _seed_view(v, plain_params[i], n, seeds).clone() if v.ndim else v.clone()
            for k, v in per.items()}
        for i, per in packed["state"].items()
    }  # fmt: skip
    return {"state": state, "param_groups": packed["param_groups"]}
