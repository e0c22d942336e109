"""MNIST held on the training device as uint8 tensors, augmented there in batches.

``torchvision.datasets.MNIST`` is the loader of record (it downloads when online). The
whole set then lives on the device (60,000 x 28 x 28 uint8 = 47 MB), and each batch is
gathered, warped and normalised there: no per-sample PIL work, no DataLoader workers.

The origin's train augmentation, per sample: with p=0.1 a centre crop to 22 px resized
back to 28, then a rotation uniform in +-15 degrees (fill 0), then normalisation. Here
both warps, and the optional shift and zoom of a recipe (``Augment``), are composed into
one affine map and sampled once (bilinear): one ``grid_sample`` per batch. The random
draws come from a CPU generator seeded by (seed, epoch): the same on every device and
every world size. At the origin's settings the draws and the warp are exactly the origin
pipeline's of earlier versions, so old runs repeat bit for bit.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import UserError

MEAN, STD = 0.1307, 0.3081  # training-set pixel statistics, on the [0, 1] scale
CROP_PX = 22  # the origin's centre crop, resized back to 28


@dataclass(frozen=True)
class Augment:
    """Per-sample augmentation strength; the defaults are the origin's."""

    rotate_deg: float = 15.0  # rotation, uniform in +-degrees
    crop_p: float = 0.1  # probability of the 22-px centre crop (a 28/22 zoom)
    translate: float = 0.0  # shift, uniform in +-fraction of the image, each axis
    scale: float = 0.0  # zoom, uniform in 1 +- scale

    @property
    def off(self) -> bool:
        return self.rotate_deg == self.crop_p == self.translate == self.scale == 0


# The four raw IDX files torchvision reads from <root>/MNIST/raw/, with the official
# MD5 of each uncompressed file (checked whenever a file has the official size).
RAW_FILES = {
    "train-images-idx3-ubyte": (47_040_016, "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte": (60_008, "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte": (7_840_016, "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte": (10_008, "27ae3e4e09519cfbb04c329615203637"),
}


@dataclass
class MNISTData:
    """uint8 images (N, 28, 28) and int64 labels (N,), train and test."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def to(self, device: torch.device) -> MNISTData:
        return MNISTData(*(t.to(device) for t in vars(self).values()))


def default_data_dir(flag: str | None = None) -> Path:
    """``--data-dir``, then ``MNIST_DATA_DIR``, then the user cache folder."""
    if flag:
        return Path(flag).expanduser()
    if os.environ.get("MNIST_DATA_DIR"):
        return Path(os.environ["MNIST_DATA_DIR"]).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("mnist-dist")) / "data"


def check_idx_file(path: Path) -> None:
    """Raise a clear error for a truncated or corrupted IDX file (header, size, MD5)."""
    fix = f"delete it and let mnist-dist download it again, or fix --data-dir ({path.parent})"
    raw = path.read_bytes()
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] not in (1, 3):
        raise UserError(f"corrupted MNIST file {path} (bad IDX header); {fix}")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + math.prod(dims)
    if len(raw) != expected:
        raise UserError(
            f"corrupted MNIST file {path}: {len(raw)} bytes, header says {expected}; {fix}"
        )
    size, md5 = RAW_FILES[path.name]
    if len(raw) == size and hashlib.md5(raw).hexdigest() != md5:
        raise UserError(f"corrupted MNIST file {path}: MD5 differs from the official; {fix}")


def load_mnist(data_dir: str | Path | None = None, download: bool = True) -> MNISTData:
    """Read (or download) MNIST under ``<data_dir>/MNIST/raw`` into CPU tensors."""
    from torchvision.datasets import MNIST

    root = default_data_dir(str(data_dir) if data_dir else None)
    raw = root / "MNIST" / "raw"
    if not all((raw / name).is_file() for name in RAW_FILES):
        try:
            if not download:
                raise RuntimeError("download disabled")
            MNIST(root=str(root), train=True, download=True)
        except Exception as e:
            raise UserError(
                f"MNIST not found in {raw} and the download failed ({type(e).__name__}); "
                f"put {', '.join(RAW_FILES)} there, or pass --data-dir DIR "
                "(or set MNIST_DATA_DIR) for a folder holding MNIST/raw/"
            ) from None
    for name in RAW_FILES:
        check_idx_file(raw / name)
    train = MNIST(root=str(root), train=True, download=False)
    test = MNIST(root=str(root), train=False, download=False)
    if len(train.data) != len(train.targets) or len(test.data) != len(test.targets):
        raise UserError(f"MNIST images and labels in {raw} differ in count; re-download them")
    return MNISTData(train.data, train.targets, test.data, test.targets)


def normalize(x_uint8: torch.Tensor) -> torch.Tensor:
    """(N, 28, 28) uint8 -> (N, 1, 28, 28) float, normalised with the training stats."""
    return (x_uint8.unsqueeze(1).float() / 255.0 - MEAN) / STD


def augment(x_uint8: torch.Tensor, draws: dict[str, torch.Tensor]) -> torch.Tensor:
    """Batched augmentation: (B, 28, 28) uint8 -> (B, 1, 28, 28) normalised float.

    ``draws`` (each (B,)): ``degrees`` rotation angles, ``crop`` bool (centre-crop 22 px
    then resize), and optionally ``zoom`` factors and ``shift`` (B, 2) in normalised units.
    """
    x = x_uint8.unsqueeze(1).float() / 255.0
    rad = draws["degrees"] * (math.pi / 180.0)
    # Output -> input map: a 22/28 zoom (crop + resize back), a zoom, the rotation, a shift.
    scale = torch.where(draws["crop"], CROP_PX / 28.0, 1.0)
    if "zoom" in draws:
        scale = scale / draws["zoom"]
    cos, sin = torch.cos(rad) * scale, torch.sin(rad) * scale
    zero = torch.zeros_like(cos)
    tx, ty = (draws["shift"][:, 0], draws["shift"][:, 1]) if "shift" in draws else (zero, zero)
    theta = torch.stack([cos, -sin, tx, sin, cos, ty], dim=1).view(-1, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (x - MEAN) / STD


def epoch_plan(n: int, seed: int, epoch: int, aug: Augment = Augment()) -> tuple:
    """The seeded per-epoch permutation and per-position augmentation draws (on CPU).

    The origin's draws come first, in their old order, so they stay the same whatever the
    recipe adds after them.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    draws = dict(
        degrees=(torch.rand(n, generator=g) * 2 - 1) * aug.rotate_deg,
        crop=torch.rand(n, generator=g) < aug.crop_p,
    )
    if aug.translate:  # normalised units: the image spans 2, so a fraction f is 2f
        draws["shift"] = (torch.rand(n, 2, generator=g) * 2 - 1) * (2 * aug.translate)
    if aug.scale:
        draws["zoom"] = 1 + (torch.rand(n, generator=g) * 2 - 1) * aug.scale
    return perm, draws


class TrainBatches:
    """Yields this process's augmented batches: a disjoint shard of each epoch's permutation.

    Rank r of W takes positions r, r+W, r+2W, ... of the permutation, cut to n // W each,
    so every process runs the same number of steps. The last batch may be short.
    """

    def __init__(self, x, y, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 aug: Augment = Augment()):  # fmt: skip
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
        self.rank, self.world, self.aug = rank, world, aug
        self.per_rank = len(x) // world

    def __len__(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm, draws = epoch_plan(len(self.x), self.seed, epoch, self.aug)
        take = slice(self.rank, self.per_rank * self.world, self.world)
        dev = self.x.device
        idx = perm[take].to(dev, non_blocking=True)
        draws = {k: v[take].to(dev, non_blocking=True) for k, v in draws.items()}
        for i in range(0, self.per_rank, self.batch_size):
            j = slice(i, i + self.batch_size)
            xb = self.x[idx[j]]
            if self.aug.off:  # no warp at all: the images as they are
                yield normalize(xb), self.y[idx[j]]
            else:
                yield augment(xb, {k: v[j] for k, v in draws.items()}), self.y[idx[j]]


def eval_batches(x, y, batch_size: int, rank: int = 0, world: int = 1):
    """This process's share of the test set (every image exactly once across ranks)."""
    x, y = x[rank::world], y[rank::world]
    for i in range(0, len(x), batch_size):
        yield normalize(x[i : i + batch_size]), y[i : i + batch_size]
