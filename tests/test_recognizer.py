"""predict, evaluate and export through the real CLI, on real MNIST test digits drawn as
photos and scans (tests/images.py), and their one-line errors.

python -m pytest tests/test_recognizer.py -q          # -m "not slow" skips the training
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import center_of_mass

from mnist_dist.data import load_mnist, normalize
from mnist_dist.recognizer.predict import BOX, CENTRE, INK_FLOOR, preprocess, read_image
from mnist_dist.rundir import load_trained

from .conftest import (
    REPO,
    assert_one_line_error,
    cli_error,
    make_tiny_mnist,
    real_mnist_root,
    run_cli,
)
from .images import VARIANTS, save_variant

# ---- fixtures: one trained model per module, real digits drawn four ways --------------


@pytest.fixture(scope="module")
def mnist_root() -> Path:
    return real_mnist_root()


@pytest.fixture(scope="module")
def test_set(mnist_root):
    data = load_mnist(mnist_root, download=False)
    return data.test_x, data.test_y


@pytest.fixture(scope="module")
def trained_run(trained_step5, tmp_path_factory) -> Path:
    """A copy of the session's trained step5 run folder: evaluate writes into it."""
    out = tmp_path_factory.mktemp("trained") / "run"
    shutil.copytree(trained_step5, out)
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A real run folder in seconds: step6 trained on 128 images of the tiny IDX set."""
    data = make_tiny_mnist(tmp_path_factory.mktemp("tiny") / "data")
    out = data.parent / "run"
    proc = run_cli("train", "--step", "step6", "--epochs", "1", "--train-limit", "128",
                   "--eval-batch-size", "128", "--no-progress",
                   "--data-dir", str(data), "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory, test_set) -> list[tuple[Path, int, str, int]]:
    """(file, true digit, variant, test index): the first test image of each digit 0-9,
    drawn in every variant (black on white PNG, grey JPEG, blue on cream RGB, light on dark)."""
    x, y = test_set
    folder = tmp_path_factory.mktemp("digits")
    files = []
    for d in range(10):
        i = int(torch.nonzero(y == d)[0])
        for v in VARIANTS:
            files.append((save_variant(x[i].numpy(), v, folder / f"{v}-{d}"), d, v, i))
    return files


def predict_json(*args: str) -> list[dict]:
    proc = run_cli("predict", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# ---- preprocessing --------------------------------------------------------------------


def test_preprocessing_gives_back_the_mnist_digit(digit_files, test_set):
    """Enlarged, shifted, recoloured, JPEG'd: back to 28 x 28 it matches the original."""
    x, _ = test_set
    for path, _, variant, i in digit_files:
        img = read_image(path)
        assert img.size == VARIANTS[variant][2] and img.size[0] > 200
        seen = preprocess(img, str(path))
        assert seen.shape == (28, 28) and seen.dtype == torch.uint8 and seen.max() == 255
        ink = seen.numpy().astype(float)
        rows, cols = np.nonzero(ink >= INK_FLOOR * 255)
        longer = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
        assert BOX - 1 <= longer <= BOX + 1, (path, longer)
        assert np.allclose(center_of_mass(ink), CENTRE, atol=0.6), (path, center_of_mass(ink))
        # The same digit, up to where a whole-pixel centring puts it (MNIST's was in 1/4 px)
        original = x[i].numpy().ravel().astype(float)
        corr = max(
            np.corrcoef(np.roll(ink, (dy, dx), axis=(0, 1)).ravel(), original)[0, 1]
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
        )
        assert corr > 0.93, (path, corr)  # 0.943 to 0.991 here


# ---- predict --------------------------------------------------------------------------


@pytest.mark.slow
def test_predict_reads_real_digits_in_every_format(trained_run, digit_files, tmp_path):
    shown = tmp_path / "seen"
    rows = predict_json(str(trained_run), *[str(f[0]) for f in digit_files], "--show-input",
                        str(shown))  # fmt: skip
    assert [r["image"] for r in rows] == [str(f[0]) for f in digit_files]
    right = {v: 0 for v in VARIANTS}
    for row, (path, digit, variant, _) in zip(rows, digit_files, strict=True):
        right[variant] += row["digit"] == digit
        (top, p0), (_, p1), (_, p2) = row["top3"]
        assert top == row["digit"] and 1.0 + 1e-6 >= p0 >= p1 >= p2 >= 0.0
        assert len({d for d, _ in row["top3"]}) == 3
        seen = Image.open(row["input"])  # what the model saw: a 28 x 28 MNIST-style digit
        assert Path(row["input"]).parent == shown and seen.size == (28, 28) and seen.mode == "L"
        assert np.array_equal(np.asarray(seen), preprocess(read_image(path)).numpy())
    assert all(n >= 9 for n in right.values()), right  # of 10 per variant

    proc = run_cli("predict", str(trained_run), str(digit_files[0][0]))
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    assert line.startswith(f"{digit_files[0][0]}: {rows[0]['digit']}  (top 3: ")


# ---- export ---------------------------------------------------------------------------


def run_exported(path: Path, pixels: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """(log-probs, the file's JSON description), read with the format's own runtime."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        meta = json.loads(session.get_modelmeta().custom_metadata_map["mnist_dist"])
        (out,) = session.run(None, {"pixels": pixels.numpy()})
        return torch.from_numpy(out), meta
    extra = {"mnist_dist.json": ""}
    with warnings.catch_warnings():  # torch 2.14 deprecates torch.jit; it still loads
        warnings.simplefilter("ignore", FutureWarning)
        model = torch.jit.load(str(path), _extra_files=extra)
    with torch.inference_mode():
        return model(pixels), json.loads(extra["mnist_dist.json"])


@pytest.mark.slow
@pytest.mark.parametrize("fmt, suffix", [("torchscript", ".pt"), ("onnx", ".onnx")])
def test_export_matches_the_pytorch_model_on_real_test_images(tiny_run, test_set, fmt, suffix):
    proc = run_cli("export", str(tiny_run), "--format", fmt)
    assert proc.returncode == 0, proc.stderr
    path = tiny_run / f"model{suffix}"
    assert f"wrote {path}" in proc.stdout
    x = test_set[0][:1000]  # uint8 (N, 28, 28), raw pixels: the file normalises them
    exported, meta = run_exported(path, x)
    _, net = load_trained(tiny_run)
    with torch.inference_mode():
        expected = net(normalize(x))
    assert exported.shape == (1000, 10) and exported.dtype == torch.float32
    assert torch.allclose(exported, expected, atol=1e-5, rtol=0), (exported - expected).abs().max()
    assert meta["step"] == "step6" and "uint8 (N, 28, 28)" in meta["input"]
    assert meta["trial_id"] == json.loads((tiny_run / "result.json").read_text())["trial_id"]


@pytest.mark.slow
def test_predict_on_exported_files_gives_the_run_folders_answers(
    trained_run, digit_files, tmp_path
):
    images = [str(f[0]) for f in digit_files]
    expected = predict_json(str(trained_run), *images)
    for fmt, name in (("torchscript", "m.pt"), ("onnx", "m.onnx")):
        out = tmp_path / name
        assert (
            run_cli("export", str(trained_run), "--format", fmt, "--out", str(out)).returncode == 0
        )
        got = predict_json(
            str(out), *images, *(["--trust-torchscript"] if fmt == "torchscript" else [])
        )
        assert [r["digit"] for r in got] == [r["digit"] for r in expected], fmt
        for g, e in zip(got, expected, strict=True):
            assert [d for d, _ in g["top3"]] == [d for d, _ in e["top3"]]
            assert np.allclose([p for _, p in g["top3"]], [p for _, p in e["top3"]], atol=1e-5)


# ---- evaluate -------------------------------------------------------------------------


def check_png(path: Path, min_size: tuple[int, int]) -> None:
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width >= min_size[0] and img.height >= min_size[1]


@pytest.mark.slow
def test_evaluate_scores_the_final_model_on_the_test_set(trained_run):
    proc = run_cli("evaluate", str(trained_run), "--json")  # --out defaults to the run folder
    assert proc.returncode == 0, proc.stderr
    ev = json.loads(proc.stdout)
    result = json.loads((trained_run / "result.json").read_text())
    confusion = np.array(ev["confusion"])
    assert ev["test_images"] == confusion.sum() == 10_000 and confusion.shape == (10, 10)
    assert ev["correct"] == np.trace(confusion) == 10_000 - ev["misclassified"]
    assert abs(ev["accuracy"] - result["final_test_acc"]) <= 0.02  # the trainer's own score
    assert ev["accuracy"] > 95.0
    per_true = confusion.sum(axis=1)
    for d in range(10):
        assert ev["per_class"][str(d)] == round(100 * confusion[d, d] / per_true[d], 2)
    check_png(trained_run / "confusion_matrix.png", (400, 400))
    check_png(trained_run / "misclassified.png", (800, 300))
    assert ev["files"] == [str(trained_run / "confusion_matrix.png"),
                           str(trained_run / "misclassified.png")]  # fmt: skip


@pytest.mark.slow
def test_evaluate_writes_into_out_and_prints_per_class(tiny_run, tmp_path):
    data = tiny_run.parent / "data"  # the tiny set: 256 test images
    out = tmp_path / "ev"
    proc = run_cli("evaluate", str(tiny_run), "--out", str(out), "--data-dir", str(data))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "% of 256 test images" in lines[0] and lines[1].startswith("per class (%): 0: ")
    check_png(out / "confusion_matrix.png", (400, 400))
    check_png(out / "misclassified.png", (50, 50))
    assert not (tiny_run / "confusion_matrix.png").exists()


# ---- bad input ------------------------------------------------------------------------


def blank(path: Path, colour) -> Path:
    Image.new("RGB", (120, 90), colour).save(path)
    return path


def a_one(stem: Path) -> Path:
    """A hand-made "1", drawn black on white: a readable image with ink."""
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 12:16] = 255
    return save_variant(digit, "png", stem)


def bad_cases(tmp: Path, run: Path):
    """(argv, fragments of the one error line)."""
    good = a_one(tmp / "one")
    text = tmp / "notes.png"
    text.write_text("not a picture\n")
    cut = tmp / "cut.png"
    cut.write_bytes(good.read_bytes()[:120])
    no_ckpt = tmp / "empty_run"
    no_ckpt.mkdir()
    (no_ckpt / "config.json").write_text("{}")
    (tmp / "m.pt").write_bytes(b"\x00junk")  # refused by its suffix, before it is read
    junk_onnx = tmp / "junk.onnx"
    junk_onnx.write_bytes(b"\x00junk")
    return [
        (["predict", str(run), str(text)], ["notes.png", "not an image Pillow can read"]),
        (["predict", str(run), str(tmp / "gone.jpg")], ["gone.jpg", "no such image file"]),
        (["predict", str(run), str(cut)], ["cut.png", "PNG or JPEG"]),
        (["predict", str(run), str(blank(tmp / "w.png", "white"))], ["w.png", "no ink found"]),
        (["predict", str(run), str(blank(tmp / "k.jpg", "black"))], ["k.jpg", "no ink found"]),
        (["predict", str(no_ckpt), str(good)], ["empty_run", "holds no checkpoint.pt"]),
        (["predict", str(tmp / "nope"), str(good)], ["no such run folder or model file"]),
        (["predict", str(text), str(good)], ["neither a run folder nor an exported model"]),
        (
            ["predict", str(run / "checkpoint.pt"), str(good), "--trust-torchscript"],
            ["is not a TorchScript model"],
        ),  # fmt: skip
        (["predict", str(tmp / "m.pt"), str(good)], ["m.pt is TorchScript", "--trust-torchscript"]),
        (["predict", str(junk_onnx), str(good)], ["junk.onnx", "is not an ONNX model"]),
        (["evaluate", str(no_ckpt)], ["holds no checkpoint.pt"]),
        (["export", str(no_ckpt)], ["holds no checkpoint.pt"]),
        (["export", str(run), "--format", "tflite"], ["invalid choice: 'tflite'", "onnx"]),
        (["export", str(run), "--format", "onnx", "--out", str(tmp / "x.pt")], ["end in .onnx"]),
    ]


@pytest.mark.slow
def test_bad_input_is_one_line_error(tiny_run, tmp_path, capsys):
    cases = bad_cases(tmp_path, tiny_run)
    for argv, fragments in cases:
        line = cli_error(capsys, *argv)
        assert all(frag in line for frag in fragments), (argv, line)
    for command in ("predict", "evaluate", "export"):  # each once as a real process
        argv, fragments = next(case for case in cases if case[0][0] == command)
        proc = run_cli(*argv)
        assert_one_line_error(proc, *fragments)
        assert proc.returncode == 2 and not proc.stdout, argv
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.slow
def test_onnx_without_the_export_extra_says_how_to_install_it(tiny_run, tmp_path):
    hide = tmp_path / "hide"  # modules that fail to import, as when the extra is missing
    hide.mkdir()
    for name in ("onnx", "onnxscript", "onnxruntime"):
        (hide / f"{name}.py").write_text("raise ImportError('not installed')\n")
    env = {"PYTHONPATH": f"{hide}:{REPO}"}
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"whatever")
    image = a_one(tmp_path / "one")
    out = tmp_path / "out.onnx"
    for argv in (
        ["export", str(tiny_run), "--format", "onnx", "--out", str(out)],
        ["predict", str(onnx_file), str(image)],
    ):
        proc = run_cli(*argv, env=env)
        assert_one_line_error(proc, "needs the export extra", "pip install 'mnist-dist[export]'")
    assert not out.exists()


# ---- images that used to mislead predict (issue #22) -----------------------------------


def a_seven() -> np.ndarray:
    """uint8 (H, W): a "7" in dark ink (20) on light paper (235), 120 x 100 px."""
    img = np.full((120, 100), 235, np.uint8)
    img[20:32, 15:85] = 20  # the bar
    for row in range(32, 105):  # the stem, leaning left
        col = 80 - (row - 32) // 2
        img[row, col - 6 : col + 6] = 20
    return img


def test_a_16_bit_grey_reads_like_its_8_bit_twin(tmp_path):
    gray = a_seven()
    Image.fromarray(gray).save(tmp_path / "8.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "16.png")  # 0..65535
    assert read_image(tmp_path / "16.png").mode.startswith("I")  # decoded as 16-bit
    eight, sixteen = (preprocess(read_image(tmp_path / f"{b}.png")) for b in (8, 16))
    assert torch.equal(sixteen, eight)


@pytest.mark.parametrize("bits", [8, 12])
def test_greys_stored_in_16_bit_files_are_scaled_by_their_depth(tmp_path, bits):
    """8-bit values in a 16-bit file (Image.fromarray(a.astype(uint16))) and 12-bit camera
    data read like their 8-bit twin, not as ink 16 times too faint."""
    gray = a_seven()
    Image.fromarray(gray).save(tmp_path / "8.png")
    scale = (2**bits - 1) / 255
    Image.fromarray(np.round(gray * scale).astype(np.uint16)).save(tmp_path / "n.png")
    got = preprocess(read_image(tmp_path / "n.png"))
    assert torch.equal(got, preprocess(read_image(tmp_path / "8.png")))


def test_a_card_with_a_transparent_margin_reads_as_the_card(tmp_path):
    """A dark digit on a white card whose corners are cut out (transparent): the margin
    takes the card's colour, so the card is not read as ink."""
    gray = a_seven()
    rgba = np.zeros((*gray.shape, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = gray[..., None], 255
    rgba[:10, :10, 3] = rgba[-10:, -10:, 3] = 0  # cut corners
    Image.fromarray(rgba, "RGBA").save(tmp_path / "card.png")
    Image.fromarray(gray).save(tmp_path / "plain.png")
    got = preprocess(read_image(tmp_path / "card.png"))
    assert torch.equal(got, preprocess(read_image(tmp_path / "plain.png")))


def test_an_animated_image_is_read_at_its_first_frame_with_a_notice(tmp_path, capsys):
    first = Image.fromarray(a_seven())
    first.save(tmp_path / "first.png")
    second = Image.fromarray(255 - a_seven())  # another picture: inverted
    first.save(tmp_path / "anim.gif", save_all=True, append_images=[second], duration=100)
    got = preprocess(read_image(tmp_path / "anim.gif"))
    assert "anim.gif has 2 frames; reading the first" in capsys.readouterr().err
    assert torch.equal(got, preprocess(read_image(tmp_path / "first.png")))


@pytest.mark.parametrize("ink", [255, 0])
def test_ink_on_a_transparent_background_reads_as_on_paper(tmp_path, ink):
    """Light ink on transparency read as "no ink" (it was composited on white); the paper
    is now the colour that shows the ink, so both read as the same digit on opaque paper."""
    shape = a_seven() < 128  # where the ink is
    rgba = np.zeros((*shape.shape, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = ink, np.where(shape, 255, 0)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    opaque = np.where(shape, ink, 255 - ink).astype(np.uint8)
    Image.fromarray(opaque).save(tmp_path / "o.png")
    got = preprocess(read_image(tmp_path / "t.png"))
    assert torch.equal(got, preprocess(read_image(tmp_path / "o.png")))


def test_a_huge_image_is_refused_from_its_header_and_one_at_the_limit_stays_small(tmp_path):
    import subprocess
    import sys

    from mnist_dist.errors import UserError
    from mnist_dist.recognizer.predict import MAX_PIXELS

    big = tmp_path / "big.png"
    Image.new("L", (6000, 5000), 255).save(big)  # 30 MP, a few kB compressed
    with pytest.raises(UserError, match=r"6000 x 5000 pixels is over the 25,000,000-pixel"):
        read_image(big)
    at_limit = tmp_path / "limit.png"
    canvas = Image.new("L", (5000, 5000), 235)  # MAX_PIXELS exactly
    canvas.paste(Image.fromarray(a_seven()).resize((2000, 2400)), (1500, 1300))
    canvas.save(at_limit)
    assert 5000 * 5000 == MAX_PIXELS
    # Measured inside a fresh process: the high-water mark after the imports (this CUDA
    # torch build alone reaches ~0.9 GB RSS on import) and after reading and preprocessing.
    code = (
        "import resource, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1])\n"
        "from mnist_dist.recognizer.predict import preprocess, read_image\n"
        "peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB\n"
        "before = peak(); pixels = preprocess(read_image(Path(sys.argv[2])))\n"
        "print(int(pixels.sum()), before, peak())"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(REPO), str(at_limit)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    ink, before, after = map(int, proc.stdout.split())
    assert ink > 0  # the digit was found
    assert after - before < 2**19, f"{(after - before) / 2**20:.2f} GiB for the image"  # 0.5 GiB
