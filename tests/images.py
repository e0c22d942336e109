"""Real MNIST test digits drawn as the photos and scans ``mnist-dist predict`` meets.

A 28 x 28 digit (light on dark, as in MNIST) is enlarged ``scale`` times (bicubic), drawn
in ``ink`` on ``paper`` at ``at`` = (left, top) of a larger canvas, and saved as PNG or JPEG.
The README's example image is made with this module (run from the repository root):

    MNIST_DATA_DIR=../shared/data python -m tests.images results/recognizer/digit.png --index 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

BLACK, WHITE = (0, 0, 0), (255, 255, 255)
# name -> how it is drawn: (file suffix, scale, canvas (w, h), at (left, top), ink, paper)
VARIANTS = {
    "png": (".png", 10, (420, 330), (20, 10), BLACK, WHITE),  # black on white, off-centre
    "jpeg": (".jpg", 7, (300, 260), (90, 50), (30, 30, 30), (235, 235, 235)),  # grey, lossy
    "rgb": (".png", 8, (360, 300), (120, 60), (20, 40, 160), (250, 240, 210)),  # blue on cream
    "dark": (".jpg", 6, (260, 200), (10, 20), (240, 240, 240), (25, 25, 35)),  # light on dark
}


def render(digit: np.ndarray, scale: int, canvas, at, ink, paper) -> Image.Image:
    """An RGB image of the digit, enlarged, in ``ink`` on ``paper``."""
    size = (digit.shape[1] * scale, digit.shape[0] * scale)
    big = Image.fromarray(digit.astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    image = Image.new("RGB", canvas, paper)
    image.paste(Image.new("RGB", size, ink), at, mask=big)  # the digit's grey levels as alpha
    return image


def save_variant(digit: np.ndarray, variant: str, stem: Path) -> Path:
    """``stem`` + the variant's suffix; black-on-white PNGs are saved as grayscale."""
    suffix, scale, canvas, at, ink, paper = VARIANTS[variant]
    image = render(digit, scale, canvas, at, ink, paper)
    path = stem.with_suffix(suffix)
    if suffix == ".jpg":
        image.save(path, format="JPEG", quality=85)
    else:
        image = image.convert("L") if (ink, paper) == (BLACK, WHITE) else image
        image.save(path, format="PNG")
    return path


def main() -> None:
    from mnist_dist.data import load_mnist

    p = argparse.ArgumentParser(description="Draw a real MNIST test digit as an image file.")
    p.add_argument("out", type=Path, help="file to write (.png or .jpg)")
    p.add_argument("--index", type=int, default=0, help="test-set index (default: 0, a 7)")
    p.add_argument("--variant", choices=VARIANTS, default="png", help="how it is drawn")
    p.add_argument("--data-dir", help="folder holding MNIST/raw (default: $MNIST_DATA_DIR)")
    args = p.parse_args()
    if args.out.suffix != VARIANTS[args.variant][0]:
        p.error(f"--variant {args.variant} writes {VARIANTS[args.variant][0]} files")
    data = load_mnist(args.data_dir, download=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_variant(data.test_x[args.index].numpy(), args.variant, args.out.with_suffix(""))
    print(f"wrote {args.out} (test digit {args.index}, a {int(data.test_y[args.index])})")


if __name__ == "__main__":
    main()
