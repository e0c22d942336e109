"""Data: integrity checks, batched augmentation determinism and sanity, sharding."""

import pytest
import torch

from mnist_dist.data import (
    MEAN,
    STD,
    Augment,
    TrainBatches,
    augment,
    epoch_plan,
    eval_batches,
    load_mnist,
    normalize,
)
from mnist_dist.errors import UserError


def test_loads_tiny_idx_set(tiny_mnist):
    data = load_mnist(tiny_mnist, download=False)
    assert data.train_x.shape == (512, 28, 28) and data.train_x.dtype == torch.uint8
    assert data.test_y.shape == (256,) and int(data.test_y.max()) <= 9


def test_truncated_file_is_a_clear_error(tiny_mnist):
    path = tiny_mnist / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match="train-images-idx3-ubyte.*header says"):
        load_mnist(tiny_mnist, download=False)


def test_missing_folder_names_files_and_flag(tmp_path):
    with pytest.raises(UserError) as e:
        load_mnist(tmp_path / "nowhere", download=False)
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "--data-dir"):
        assert name in str(e.value)


def test_augmentation_is_deterministic_per_seed(tiny_mnist):
    data = load_mnist(tiny_mnist, download=False)
    a = [x for x, _ in TrainBatches(data.train_x, data.train_y, 64, seed=3).epoch(1)]
    b = [x for x, _ in TrainBatches(data.train_x, data.train_y, 64, seed=3).epoch(1)]
    c = [x for x, _ in TrainBatches(data.train_x, data.train_y, 64, seed=4).epoch(1)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


def test_augmentation_keeps_pixel_statistics_sane(real_mnist):
    data = load_mnist(real_mnist, download=False)
    x = data.train_x[:4096]
    perm, draws = epoch_plan(len(x), seed=0, epoch=0)
    plain, aug = normalize(x), augment(x, draws)
    assert aug.shape == plain.shape == (4096, 1, 28, 28)
    # Normalised training pixels are ~N(0, 1); rotation pads with background (fill 0) and
    # the 22 px crop zooms in, so the statistics move a little but stay in that range.
    assert abs(plain.mean().item()) < 0.05 and abs(plain.std().item() - 1) < 0.05
    assert abs(aug.mean().item() - plain.mean().item()) < 0.1
    assert abs(aug.std().item() - plain.std().item()) < 0.1
    assert aug.min().item() >= plain.min().item() - 1e-4  # fill 0 is the background value
    # About 10% of samples are cropped, and angles span +-15 degrees.
    assert 0.07 < draws["crop"].float().mean().item() < 0.13
    assert 14 < draws["degrees"].abs().max().item() <= 15
    assert set(draws) == {"degrees", "crop"}  # the origin's draws only


def test_zero_angle_no_crop_is_identity():
    x = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    out = augment(x, dict(degrees=torch.zeros(4), crop=torch.zeros(4, dtype=torch.bool)))
    assert torch.allclose(out, normalize(x), atol=1e-5)


def test_recipe_augmentation_strength():
    """Shift and zoom join the same single warp; off means the images as they are."""
    x = torch.zeros(512, 28, 28, dtype=torch.uint8)
    x[:, 12:16, 12:16] = 255  # a centred square of ink
    y = torch.zeros(512, dtype=torch.long)

    def images(**aug):
        return torch.cat([xb for xb, _ in TrainBatches(x, y, 128, 0, aug=Augment(**aug)).epoch(0)])

    ink = lambda b: (b > 0).float()  # noqa: E731  normalised background is negative
    col = torch.arange(28.0)
    centre_x = lambda b: (ink(b) * col).sum((1, 2, 3)) / ink(b).sum((1, 2, 3))  # noqa: E731
    assert torch.equal(images(rotate_deg=0, crop_p=0), normalize(x))  # `off`: no warp
    shifted = centre_x(images(rotate_deg=0, crop_p=0, translate=0.1))
    assert shifted.std() > 1.0 and shifted.abs().sub(13.5).abs().max() <= 2.8 + 0.5
    mass = (images(rotate_deg=0, crop_p=0, scale=0.3) * STD + MEAN).sum((1, 2, 3))
    assert mass.min() < 16 * 0.75 and mass.max() > 16 * 1.3  # zoom^2 of 16 px of ink
    same = [images()[i] for i in range(3)]  # origin settings: rotation and crop only
    assert all(not torch.equal(a, normalize(x[:1])[0]) for a in same)


def test_shards_are_disjoint_and_equal_sized():
    x, y = torch.arange(1001).view(-1, 1, 1).expand(-1, 28, 28).to(torch.uint8), torch.arange(1001)
    seen = []
    for rank in range(2):
        batches = TrainBatches(x, y, 64, seed=0, rank=rank, world=2)
        labels = torch.cat([yb for _, yb in batches.epoch(0)])
        assert len(labels) == 500
        seen.append(set(labels.tolist()))
    assert not (seen[0] & seen[1])


def test_test_batches_cover_every_image_once():
    x, y = torch.zeros(1001, 28, 28, dtype=torch.uint8), torch.arange(1001)
    got = torch.cat([yb for r in range(3) for _, yb in eval_batches(x, y, 100, r, 3)])
    assert sorted(got.tolist()) == list(range(1001))
