"""The step models: pure ``nn.Module`` builders in one registry, no I/O.

Every model maps ``(N, 1, 28, 28)`` float images to ``(N, 10)`` log-probabilities.
step1..step4 reproduce the origin study layer for layer (190,442 / 18,258 / 6,270 /
7,074 trainable parameters). "BN" is ``BatchNorm2d`` placed *after* the ReLU, as in
the study. step5 and step6 go beyond it with fewer parameters (see results/beyond/):
bias-free Conv -> BN -> ReLU blocks, "same" padding so 28 -> 14 -> 7 over two max-pools,
and a global-average-pool + linear head. Shapes in the comments are (channels, height,
width) of one sample.

List them with ``mnist-dist models``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


def conv(cin: int, cout: int, k: int = 3, pad: int = 0, bn: bool = False) -> list[nn.Module]:
    """Conv (with bias) -> ReLU [-> BN], the study's basic block."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=pad), nn.ReLU()]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    return layers


def cbr(cin: int, cout: int) -> list[nn.Module]:
    """3x3 "same" Conv (no bias: BN's shift replaces it) -> BN -> ReLU."""
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class GAPLinear(nn.Module):
    """Global average pool -> linear -> log_softmax: (C, H, W) -> (10,)."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Linear(channels, 10)

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3))).log_softmax(dim=1)


class LogSoftmaxHead(nn.Module):
    """Global average pool -> flatten -> log_softmax: (C, H, W) -> (C,)."""

    def forward(self, x):
        return x.mean(dim=(2, 3)).log_softmax(dim=1)


def step1() -> nn.Module:
    return nn.Sequential(
        *conv(1, 32),  # 32x26x26
        *conv(32, 64),  # 64x24x24
        *conv(64, 128),  # 128x22x22
        *conv(128, 32, k=1),  # 32x22x22
        *conv(32, 64),  # 64x20x20
        nn.MaxPool2d(2),  # 64x10x10
        *conv(64, 128),  # 128x8x8
        *conv(128, 10, k=1),  # 10x8x8
        LogSoftmaxHead(),  # 10
    )


def step2() -> nn.Module:
    return nn.Sequential(
        *conv(1, 128, pad=1),  # 128x28x28
        *conv(128, 8, k=1),  # 8x28x28
        *conv(8, 16, pad=1),  # 16x28x28
        nn.MaxPool2d(2),  # 16x14x14
        *conv(16, 16),  # 16x12x12
        *conv(16, 32),  # 32x10x10
        nn.MaxPool2d(2),  # 32x5x5
        *conv(32, 16, k=1),  # 16x5x5
        *conv(16, 16),  # 16x3x3
        *conv(16, 32),  # 32x1x1
        *conv(32, 10, k=1),  # 10x1x1
        LogSoftmaxHead(),  # 10
    )


def step3() -> nn.Module:
    return nn.Sequential(
        *conv(1, 128, pad=1, bn=True),  # 128x28x28
        *conv(128, 4, k=1),  # 4x28x28
        *conv(4, 8, pad=1, bn=True),  # 8x28x28
        nn.MaxPool2d(2),  # 8x14x14
        *conv(8, 8, bn=True),  # 8x12x12
        *conv(8, 16, bn=True),  # 16x10x10
        nn.MaxPool2d(2),  # 16x5x5
        *conv(16, 8, k=1),  # 8x5x5
        *conv(8, 8, bn=True),  # 8x3x3
        *conv(8, 16, bn=True),  # 16x1x1
        *conv(16, 10, k=1),  # 10x1x1
        LogSoftmaxHead(),  # 10
    )


def step4() -> nn.Module:
    return nn.Sequential(
        *conv(1, 128, bn=True),  # 128x26x26
        *conv(128, 8, k=1),  # 8x26x26
        *conv(8, 8, bn=True),  # 8x24x24
        nn.MaxPool2d(2),  # 8x12x12
        *conv(8, 8, bn=True),  # 8x10x10
        *conv(8, 16, bn=True),  # 16x8x8
        *conv(16, 8, k=1),  # 8x8x8
        *conv(8, 8, bn=True),  # 8x6x6
        *conv(8, 16, bn=True),  # 16x4x4
        nn.AdaptiveAvgPool2d(1),  # 16x1x1
        nn.Conv2d(16, 10, 1),  # 10x1x1, no ReLU: these are the logits
        nn.Flatten(),  # 10
        nn.LogSoftmax(dim=1),
    )


def step5() -> nn.Module:
    """Under 8k parameters, aimed at 99.5% mean; reached 99.30 +- 0.045 (n=10, CPU).

    The width goes where the pixels are few. No 128-wide stem: an epoch costs ~1/5 of step4's.
    """
    return nn.Sequential(
        *cbr(1, 8),  # 8x28x28
        *cbr(8, 12),  # 12x28x28
        nn.MaxPool2d(2),  # 12x14x14
        *cbr(12, 16),  # 16x14x14
        *cbr(16, 16),  # 16x14x14
        nn.MaxPool2d(2),  # 16x7x7
        *cbr(16, 16),  # 16x7x7
        GAPLinear(16),  # 10
    )


def step6() -> nn.Module:
    """At most 4k parameters, aimed at 99.4% mean; reached 99.10 +- 0.12 (n=10, CPU)."""
    return nn.Sequential(
        *cbr(1, 6),  # 6x28x28
        *cbr(6, 8),  # 8x28x28
        nn.MaxPool2d(2),  # 8x14x14
        *cbr(8, 10),  # 10x14x14
        *cbr(10, 12),  # 12x14x14
        nn.MaxPool2d(2),  # 12x7x7
        *cbr(12, 12),  # 12x7x7
        GAPLinear(12),  # 10
    )


# ---- candidates of the issue #12 search (results/goal/): published sub-8k designs ----


def b7784() -> nn.Module:
    """7-7-10 | 10-12 | 16-18, GAP + linear: a published 7,784-param design."""
    return nn.Sequential(
        *cbr(1, 7),  # 7x28x28
        *cbr(7, 7),  # 7x28x28
        *cbr(7, 10),  # 10x28x28
        nn.MaxPool2d(2),  # 10x14x14
        *cbr(10, 10),  # 10x14x14
        *cbr(10, 12),  # 12x14x14
        nn.MaxPool2d(2),  # 12x7x7
        *cbr(12, 16),  # 16x7x7
        *cbr(16, 18),  # 18x7x7
        GAPLinear(18),  # 10
    )


def c6198() -> nn.Module:
    """8-10 | 12 | 16-16, a 1x1 conv to 10, GAP: after a published 6,260-param design;
    its 28 px work is a third of step5's."""
    return nn.Sequential(
        *cbr(1, 8),  # 8x28x28
        *cbr(8, 10),  # 10x28x28
        nn.MaxPool2d(2),  # 10x14x14
        *cbr(10, 12),  # 12x14x14
        nn.MaxPool2d(2),  # 12x7x7
        *cbr(12, 16),  # 16x7x7
        *cbr(16, 16),  # 16x7x7
        nn.Conv2d(16, 10, 1),  # 10x7x7: the logits, per position
        LogSoftmaxHead(),  # 10
    )


def a7608() -> nn.Module:
    """Three 10-channel convs at 28 px, then 16-16-8-8 unpadded, a 1x1 conv, GAP: after a
    published 7,918-param design."""
    unpadded = lambda cin, cout: [  # noqa: E731
        nn.Conv2d(cin, cout, 3, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    ]  # fmt: skip
    return nn.Sequential(
        *cbr(1, 10),  # 10x28x28
        *cbr(10, 10),  # 10x28x28
        *cbr(10, 10),  # 10x28x28
        nn.MaxPool2d(2),  # 10x14x14
        *unpadded(10, 16),  # 16x12x12
        *unpadded(16, 16),  # 16x10x10
        *unpadded(16, 8),  # 8x8x8
        *unpadded(8, 8),  # 8x6x6
        nn.Conv2d(8, 10, 1),  # 10x6x6
        LogSoftmaxHead(),  # 10
    )


def d3702() -> nn.Module:
    """Three blocks of three same-padded convs, 4 | 8 | 8 channels, GAP + 1x1: after a
    published 3,762-param design (stretch: <= 4k)."""
    return nn.Sequential(
        *cbr(1, 4), *cbr(4, 4), *cbr(4, 4),  # 4x28x28
        nn.MaxPool2d(2),  # 4x14x14
        *cbr(4, 8), *cbr(8, 8), *cbr(8, 8),  # 8x14x14
        nn.MaxPool2d(2),  # 8x7x7
        *cbr(8, 8), *cbr(8, 8), *cbr(8, 8),  # 8x7x7
        nn.Conv2d(8, 10, 1),  # 10x7x7
        LogSoftmaxHead(),  # 10
    )  # fmt: skip


# ---- the searchable family (issue #23): its shape is config fields ----------------------


def family(width1: int, width2: int, width3: int, depth1: int, depth2: int, depth3: int,
           squeeze: int, head: str) -> nn.Module:  # fmt: skip
    """Three stages of same-padded 3x3 CBR blocks at 28, 14 and 7 px (``depthK`` convs of
    ``widthK`` channels), a max-pool between stages, optionally a 1x1 CBR to ``squeeze``
    channels before each pool, and a head: "linear" (GAP, linear) or "conv" (1x1 to 10, GAP).
    """
    layers: list[nn.Module] = []
    cin = 1
    for stage, (width, depth) in enumerate(((width1, depth1), (width2, depth2), (width3, depth3))):
        for _ in range(depth):
            layers += cbr(cin, width)  # width x (28 | 14 | 7) x same
            cin = width
        if stage < 2:
            if squeeze:
                layers += [nn.Conv2d(cin, squeeze, 1, bias=False), nn.BatchNorm2d(squeeze),
                           nn.ReLU()]  # fmt: skip
                cin = squeeze  # squeeze x 28 | 14
            layers.append(nn.MaxPool2d(2))  # cin x 14 | 7
    if head == "linear":
        layers.append(GAPLinear(cin))  # 10
    else:
        layers += [nn.Conv2d(cin, 10, 1), LogSoftmaxHead()]  # 10x7x7, then 10
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class StepModel:
    name: str
    build: Callable[[], nn.Module]
    description: str


MODELS: dict[str, StepModel] = {
    m.name: m
    for m in [
        StepModel("step1", step1, "origin step 1: plain 7-conv net, no BN, GAP head"),
        StepModel("step2", step2, "origin step 2: 1x1 bottlenecks, two max-pools, GAP head"),
        StepModel("step3", step3, "origin step 3: step 2 slimmed, BN after each 3x3 ReLU"),
        StepModel("step4", step4, "origin step 4: 128-wide stem, BN, GAP then 1x1 classifier"),
        StepModel("step5", step5, "beyond: <8k params, same-padded CBR blocks, GAP + linear"),
        StepModel("step6", step6, "beyond: <=4k params, step5 narrowed"),
        StepModel(
            "step7",
            b7784,
            "goal (issue #12): b7784 with its published recipe, picked on validation",
        ),
        StepModel("b7784", b7784, "candidate (issue #12): 7-7-10|10-12|16-18, GAP + linear"),
        StepModel("c6198", c6198, "candidate (issue #12): 8-10|12|16-16, 1x1 conv, GAP"),
        StepModel("a7608", a7608, "candidate (issue #12): 10-10-10|16-16-8-8 unpadded, GAP"),
        StepModel("d3702", d3702, "candidate (issue #12, <=4k): 4x3|8x3|8x3, 1x1 conv, GAP"),
        StepModel(
            "family",
            family,
            "searchable (issue #23): widths, depths, squeeze, head are config fields",
        ),  # fmt: skip
    ]
}


def _promoted() -> dict[str, StepModel]:
    """Steps promoted from a search (config.PROMOTED, steps.toml): a registered model's
    builder under the new name; a family step takes its shape from its recipe."""
    from .config import PROMOTED

    return {name: StepModel(name, MODELS[step["model"]].build, step.get("description", ""))
            for name, step in PROMOTED.items()}  # fmt: skip


MODELS.update(_promoted())


def build_model(name: str, **shape) -> nn.Module:
    """Build a registered step model; a family step takes its shape from ``shape`` or else
    its recipe. Raises KeyError for an unknown name."""
    from .config import RECIPES, SHAPE

    recipe = {k: v for k, v in RECIPES.get(name, {}).items() if k in SHAPE}
    return MODELS[name].build(**{**recipe, **shape}) if recipe else MODELS[name].build()


def count_params(model: nn.Module) -> int:
    """Trainable parameters, BN affine included (running stats are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
