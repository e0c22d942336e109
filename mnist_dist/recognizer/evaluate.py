"""Score a run's final model on the 10,000 MNIST test images, with pictures of its errors.

    mnist-dist evaluate runs/s5 [--out DIR] [--json]

The model is the run's headline weights (``rundir.load_trained``), on CPU. Prints the
accuracy and the accuracy per true digit (``--json``: also the confusion matrix), and
writes into ``--out`` (default: the run folder):

* ``confusion_matrix.png``: counts of (true, predicted) digits, log colour scale;
* ``misclassified.png``: the wrongly classified test digits, most confident first, each
  titled ``true→predicted`` with the model's probability for its prediction (at most
  MAX_SHOWN; the title says how many there were).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from ..data import load_mnist
from ..errors import ArgumentParser, UserError, cli_errors
from ..fsio import atomic_open
from ..rundir import load_trained
from .predict import Recognizer

CONFUSION, MISCLASSIFIED = "confusion_matrix.png", "misclassified.png"
MAX_SHOWN, COLUMNS = 200, 20  # misclassified.png: digits drawn, per row


def score(model: Recognizer, x: torch.Tensor, y: torch.Tensor, batch: int = 2000):
    """(predicted digits, their probabilities, confusion matrix [true, predicted])."""
    with torch.inference_mode():
        log_probs = torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])
    prob, pred = log_probs.exp().max(dim=1)
    confusion = torch.zeros(10, 10, dtype=torch.long)
    confusion.index_put_((y, pred), torch.ones_like(y), accumulate=True)
    return pred, prob, confusion


def summary(confusion: torch.Tensor) -> dict[str, Any]:
    correct, per_true = confusion.diag(), confusion.sum(dim=1)
    n = int(per_true.sum())
    per_class = {
        str(d): round(100.0 * int(correct[d]) / int(per_true[d]), 2) if per_true[d] else None
        for d in range(10)
    }
    return dict(
        test_images=n,
        correct=int(correct.sum()),
        accuracy=round(100.0 * int(correct.sum()) / n, 2),
        per_class=per_class,
        misclassified=n - int(correct.sum()),
        confusion=confusion.tolist(),
    )


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")


def plot_confusion(confusion: torch.Tensor, title: str, path: Path) -> None:
    import numpy as np
    from matplotlib.colors import LogNorm

    plt = _pyplot()
    counts = confusion.numpy()
    fig, ax = plt.subplots(figsize=(7, 6))
    masked = counts.astype(float)
    masked[masked == 0] = float("nan")  # zero cells stay white
    image = ax.imshow(masked, cmap="Blues", norm=LogNorm(vmin=1, vmax=max(2, counts.max())))
    for (i, j), c in np.ndenumerate(counts):
        if c:
            light = c > math.sqrt(counts.max())  # white text on the dark half of the scale
            ax.text(j, i, str(c), ha="center", va="center", fontsize=8,
                    color="white" if light else "black")  # fmt: skip
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="test images (log scale)")
    _save(fig, path)
    plt.close(fig)


def plot_misclassified(x, y, pred, prob, title: str, path: Path) -> None:
    plt = _pyplot()
    wrong = torch.nonzero(pred != y).flatten()
    wrong = wrong[prob[wrong].argsort(descending=True)][:MAX_SHOWN]  # most confident first
    cols = min(COLUMNS, max(1, len(wrong)))
    rows = max(1, math.ceil(len(wrong) / cols))
    size = (0.9 * cols, 1.05 * rows + 0.4)
    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong.tolist(), strict=False):
        ax.imshow(x[i].numpy(), cmap="gray_r", vmin=0, vmax=255)  # dark ink on white
        ax.set_title(f"{int(y[i])}→{int(pred[i])} {float(prob[i]):.0%}", fontsize=7, pad=2)
    if not len(wrong):
        axes.flat[0].text(0.5, 0.5, "no misclassified digits", ha="center", va="center")
    fig.suptitle(title, fontsize=9)
    _save(fig, path)
    plt.close(fig)


@cli_errors
def evaluate_main(argv: list[str] | None = None, prog: str = "mnist-dist evaluate") -> None:
    """mnist-dist evaluate RUN [--out DIR] [--json]"""
    p = ArgumentParser(
        prog=prog,
        description="Score a run's final model on the 10,000 test images: accuracy, per-class "
        "accuracy, confusion_matrix.png and misclassified.png.",
    )
    p.add_argument("run", help="run folder (mnist-dist train --out)")
    p.add_argument("--out", help="folder for the two PNGs (default: the run folder)")
    p.add_argument("--json", action="store_true", help="print JSON (with the confusion matrix)")
    p.add_argument("--data-dir", help="folder holding MNIST/raw (default: $MNIST_DATA_DIR)")
    p.add_argument("--no-download", action="store_true", help="never download MNIST")
    args = p.parse_args(argv)
    run = Path(args.run)
    cfg, net = load_trained(run)
    data = load_mnist(args.data_dir, download=not args.no_download)
    x, y = data.test_x, data.test_y
    pred, prob, confusion = score(Recognizer(net).eval(), x, y)
    result = dict(run=str(run), step=cfg.step, trial_id=cfg.trial_id(), **summary(confusion))
    out = Path(args.out) if args.out else run
    head = f"{cfg.step} ({run.name}): {result['accuracy']:.2f}% of {len(y):,} test images"
    try:
        plot_confusion(confusion, f"Confusion matrix\n{head}", out / CONFUSION)
        title = f"Misclassified: {result['misclassified']:,}"
        if result["misclassified"] > MAX_SHOWN:
            title += f" ({MAX_SHOWN} most confident shown)"
        title += f"; true→predicted, probability of the prediction. {head}"
        plot_misclassified(x, y, pred, prob, title, out / MISCLASSIFIED)
    except OSError as e:
        raise UserError(f"cannot write into {out} ({e.strerror or e}); fix --out") from None
    result["files"] = [str(out / CONFUSION), str(out / MISCLASSIFIED)]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{head}: {result['correct']:,} right, {result['misclassified']:,} wrong")
    per_class = [f"{d}: {'-' if a is None else f'{a:.2f}'}" for d, a in result["per_class"].items()]
    print("per class (%): " + "  ".join(per_class))
    for f in result["files"]:
        print(f"wrote {f}")


main = evaluate_main
