"""Recognize digits in photos and scans: MNIST's own preprocessing, then a trained model.

    mnist-dist predict runs/s5 digit.png scan.jpg [--json] [--show-input DIR]
    mnist-dist predict runs/s5/model.onnx digit.png        # an exported file (mnist-dist export)
    mnist-dist predict runs/s5/model.pt digit.png --trust-torchscript  # TorchScript: opt-in

Any image Pillow reads (PNG, JPEG, ...), any size, colour or grey, dark ink on light paper
or light on dark, becomes a 28 x 28 MNIST-style digit the way MNIST's were made: grayscale;
inverted when the paper (the median of the border pixels) is light; cropped to the ink's
bounding box; the longer side scaled to 20 px, keeping the aspect ratio; placed in 28 x 28
so that its centre of mass sits at (14, 14), where MNIST's test digits have theirs (mean
13.99, 14.00); normalised with the training statistics (``data.normalize``).

A model here takes raw pixels: uint8 ``(N, 28, 28)``, light digit on dark, as in MNIST's
IDX files, and returns log-probabilities ``(N, 10)``. ``Recognizer`` puts the normalisation
in front of a step model; ``mnist-dist export`` writes exactly that module to a file.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import normalize
from ..errors import ArgumentParser, UserError, cli_errors
from ..fsio import atomic_open

SIZE, BOX = 28, 20  # MNIST: digits size-normalised into a 20 x 20 box inside 28 x 28
CENTRE = 14.0  # where the centre of mass goes (row, col), pixel-index coordinates
MIN_CONTRAST = 40  # grey levels between paper and the strongest ink; below that: no ink
INK_FLOOR = 0.25  # share of the ink contrast a pixel needs to count for the bounding box
# Above this many pixels an image is refused from its header, before it is decoded: a
# 25 MP photo takes about 0.5 GB through preprocess (float32 copies); a digit needs far less.
MAX_PIXELS = 25_000_000
EXTRA = "pip install 'mnist-dist[export]'"
EXPORTED = {".pt": "torchscript", ".onnx": "onnx"}  # file suffix -> format (mnist-dist export)

Classifier = Callable[[torch.Tensor], torch.Tensor]  # uint8 (N, 28, 28) -> (N, 10) log-probs


class Recognizer(nn.Module):
    """A step model with its input normalisation: uint8 (N, 28, 28) -> (N, 10) log-probs."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(normalize(pixels))


# ---- images -> 28 x 28 ----------------------------------------------------------------


def read_image(path: Path):
    """The image at ``path`` as a Pillow image, upright (EXIF); a one-line error otherwise.
    Sizes are checked from the header, before decoding; an animated image is read at its
    first frame, with a notice."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not path.is_file():
        raise UserError(f"{path}: no such image file")
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise UserError(
                    f"{path}: {width} x {height} pixels is over the {MAX_PIXELS:,}-pixel limit; "
                    "crop or shrink it to the digit"
                )
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                print(f"mnist-dist: note: {path} has {frames} frames; reading the first",
                      file=sys.stderr)  # fmt: skip
            return ImageOps.exif_transpose(img)  # a loaded copy, turned as the camera was
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        why = "not an image Pillow can read" if isinstance(e, UnidentifiedImageError) else str(e)
        raise UserError(f"{path}: {why}; give a PNG or JPEG of a digit") from None
    except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt data
        raise UserError(f"{path}: unreadable image ({e}); give a PNG or JPEG of a digit") from None


def grayscale(img) -> np.ndarray:
    """float32 (H, W) in [0, 255]. Greys of more than 8 bits are scaled by their depth
    (Pillow's convert("L") clips them at 255). Transparent pixels become paper: of the
    card's colour when most pixels are opaque (a card with its margin cut out), else of
    the colour that shows the ink (black behind light ink, white behind dark)."""
    from PIL import Image

    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit PNG and TIFF greys
        gray = np.asarray(img, dtype=np.float32)
        top = float(gray.max(initial=0.0))  # 8-, 10-, 12- or 16-bit data: scale by its depth
        bits = next((b for b in (8, 10, 12, 16) if top < 2**b), 16)
        return np.multiply(gray, 255.0 / (2**bits - 1), out=gray)
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        opaque = np.asarray(rgba, dtype=np.uint8)[..., 3] > 127
        levels = np.asarray(rgba.convert("L"), dtype=np.float32)[opaque]
        if levels.size > opaque.size / 2:  # mostly opaque: a card, its margin cut out
            level = int(np.median(levels))  # the margin takes the card's own colour
        else:  # the opaque part is the ink: paper that shows it
            level = 0 if levels.size and float(levels.mean()) > 127.5 else 255
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (level,) * 3 + (255,)), rgba)
    return np.asarray(img.convert("L"), dtype=np.float32)


def preprocess(img, name: str = "image") -> torch.Tensor:
    """A Pillow image -> uint8 (28, 28), light digit on dark, as MNIST's (module docstring).
    An image without ink (blank, or flatter than MIN_CONTRAST grey levels) is a UserError."""
    from scipy.ndimage import center_of_mass
    from torchvision.transforms.v2 import functional as TF

    gray = grayscale(img)  # float32, changed in place below: a 25 MP photo is 100 MB a copy
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    paper = float(np.median(border))
    if paper > 127.5:  # light paper: invert, so the ink is the bright part, as in MNIST
        np.subtract(255.0, gray, out=gray)
        paper = 255.0 - paper
    contrast = float(gray.max()) - paper
    if contrast < MIN_CONTRAST:
        raise UserError(
            f"{name}: no ink found (a blank image, or ink within {MIN_CONTRAST} grey levels of "
            "the paper); give a digit written dark on light paper or light on dark"
        )
    gray -= paper
    gray /= contrast
    ink = torch.from_numpy(np.clip(gray, 0.0, 1.0, out=gray)).unsqueeze(0)
    rows, cols = torch.nonzero(ink[0] >= INK_FLOOR, as_tuple=True)
    top, left = int(rows.min()), int(cols.min())
    height, width = int(rows.max()) - top + 1, int(cols.max()) - left + 1
    scale = BOX / max(height, width)
    size = [max(1, round(height * scale)), max(1, round(width * scale))]
    digit = TF.resized_crop(ink, top, left, height, width, size, antialias=True).clamp(0, 1)
    digit = digit / digit.max()  # strongest ink at full scale, as in MNIST (max 255)
    cy, cx = center_of_mass(digit[0].numpy())
    y0 = min(max(round(CENTRE - cy), 0), SIZE - size[0])  # never push ink out of the frame
    x0 = min(max(round(CENTRE - cx), 0), SIZE - size[1])
    placed = TF.pad(digit, [x0, y0, SIZE - size[1] - x0, SIZE - size[0] - y0], fill=0.0)
    return (placed[0] * 255).round().to(torch.uint8)


def save_input(pixels: torch.Tensor, path: Path) -> None:
    """The 28 x 28 image the model saw, as a PNG (atomic)."""
    from PIL import Image

    with atomic_open(path, "wb") as f:
        Image.fromarray(pixels.numpy()).save(f, format="PNG")


# ---- models: a run folder or an exported file -----------------------------------------


def load_classifier(path: Path, trust_torchscript: bool = False) -> Classifier:
    """A run folder's model (headline weights), or a file from ``mnist-dist export``.

    A run folder's checkpoint and an ONNX file are data: reading them runs nothing of
    theirs. A TorchScript file is a program, so it is read only when the user vouches for
    it (``--trust-torchscript``)."""
    if path.is_dir():
        from ..rundir import load_trained

        _, net = load_trained(path)
        return Recognizer(net).eval()
    if not path.exists():
        raise UserError(f"{path}: no such run folder or model file")
    if path.suffix not in EXPORTED:
        raise UserError(
            f"{path} is neither a run folder nor an exported model (.pt TorchScript or .onnx); "
            "see `mnist-dist export --help`"
        )
    if path.suffix == ".onnx":
        return load_onnx(path)
    if not trust_torchscript:
        raise UserError(
            f"{path} is TorchScript, which can run code when loaded: pass --trust-torchscript "
            "if you trust its source, or use an ONNX export (mnist-dist export RUN --format onnx)"
        )
    return load_torchscript(path)


def load_torchscript(path: Path) -> Classifier:
    hint = "give a run folder, or a file from `mnist-dist export RUN --format torchscript`"
    try:
        with warnings.catch_warnings():  # torch 2.14 deprecates torch.jit; it still works
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, OSError, ValueError) as e:
        kind = type(e).__name__
        raise UserError(f"{path} is not a TorchScript model ({kind}); {hint}") from None
    return model


def load_onnx(path: Path) -> Classifier:
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError(f"reading an ONNX model needs the export extra: {EXTRA}") from None
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...)
        kind = type(e).__name__
        raise UserError(
            f"{path} is not an ONNX model ({kind}); give a file from "
            "`mnist-dist export RUN --format onnx`"
        ) from None
    name = session.get_inputs()[0].name
    return lambda pixels: torch.from_numpy(session.run(None, {name: pixels.numpy()})[0])


# ---- mnist-dist predict ---------------------------------------------------------------


def top3(log_probs: torch.Tensor) -> list[list[Any]]:
    """[[digit, probability], ...], most likely first."""
    probs, digits = log_probs.exp().topk(3)
    return [[int(d), round(float(p), 6)] for d, p in zip(digits, probs, strict=True)]


def input_paths(folder: Path, images: list[Path]) -> list[Path]:
    """One PNG per image in ``folder``: its name's stem, numbered when two stems clash."""
    seen: dict[str, int] = {}
    out = []
    for img in images:
        n = seen[img.stem] = seen.get(img.stem, 0) + 1
        out.append(folder / (f"{img.stem}.png" if n == 1 else f"{img.stem}-{n}.png"))
    return out


@cli_errors
def predict_main(argv: list[str] | None = None, prog: str = "mnist-dist predict") -> None:
    """mnist-dist predict RUN IMAGE... [--json] [--show-input DIR]"""
    p = ArgumentParser(
        prog=prog,
        description="Predict the digit in each image (PNG or JPEG, any size, dark on light "
        "or light on dark), with the top-3 probabilities.",
    )
    p.add_argument("run", help="run folder (mnist-dist train --out), or an exported .pt/.onnx")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per image")
    p.add_argument("--show-input", metavar="DIR", help="write the 28x28 image the model saw")
    p.add_argument(
        "--trust-torchscript",
        action="store_true",
        help="load a TorchScript .pt file; it is a program that can run code, so only one "
        "you made or trust (run folders and .onnx files need no such flag)",
    )
    args = p.parse_args(argv)
    paths = [Path(s) for s in args.images]
    pixels = torch.stack([preprocess(read_image(path), str(path)) for path in paths])
    classify = load_classifier(Path(args.run), args.trust_torchscript)
    with torch.inference_mode():
        log_probs = classify(pixels)
    rows = [
        dict(image=str(path), digit=int(lp.argmax()), top3=top3(lp))
        for path, lp in zip(paths, log_probs, strict=True)
    ]
    if args.show_input:
        for row, x, out in zip(
            rows, pixels, input_paths(Path(args.show_input), paths), strict=True
        ):
            try:
                save_input(x, out)
            except OSError as e:
                raise UserError(
                    f"cannot write {out} ({e.strerror or e}); fix --show-input"
                ) from None
            row["input"] = str(out)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        ranked = ", ".join(f"{d} {prob:.4f}" for d, prob in row["top3"])
        seen = f"  [input: {row['input']}]" if "input" in row else ""
        print(f"{row['image']}: {row['digit']}  (top 3: {ranked}){seen}")


main = predict_main
