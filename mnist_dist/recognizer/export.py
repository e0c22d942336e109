"""Export a run's model as one self-contained file: TorchScript (.pt) or ONNX (.onnx).

    mnist-dist export runs/s5                          # -> runs/s5/model.pt (TorchScript)
    mnist-dist export runs/s5 --format onnx            # -> runs/s5/model.onnx
    mnist-dist export runs/s5 --format onnx --out digits.onnx

The file holds the run's headline weights and the input normalisation
(``recognize.Recognizer``), so it needs nothing from this package:

* input ``pixels``: uint8, shape (N, 28, 28), any N; light digit on dark, 0-255, as in
  MNIST's IDX files (``mnist-dist predict --show-input`` writes such images);
* output ``log_probs``: float32 (N, 10), log-probabilities of the digits 0-9.

Both formats carry a JSON description (step, trial id, config, the contract above): in
TorchScript as the extra file ``mnist_dist.json``, in ONNX as metadata ``mnist_dist``.
ONNX needs the export extra (``pip install 'mnist-dist[export]'``: onnx, onnxscript for
torch's exporter, onnxruntime to run the file).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import ArgumentParser, UserError, cli_errors
from ..fsio import atomic_open
from ..rundir import load_trained
from .predict import EXTRA, Recognizer

FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}
META = "mnist_dist"  # ONNX metadata key; TorchScript extra file META + ".json"
INPUT, OUTPUT = "pixels", "log_probs"
CONTRACT = dict(
    input="pixels: uint8 (N, 28, 28), light digit on dark, 0-255, as MNIST's IDX files",
    output="log_probs: float32 (N, 10), log-probabilities of the digits 0-9",
)


def example_input(n: int = 2) -> torch.Tensor:
    return torch.zeros(n, 28, 28, dtype=torch.uint8)


def save_torchscript(model: Recognizer, path: Path, meta: dict[str, Any]) -> None:
    with warnings.catch_warnings():  # torch 2.14 deprecates torch.jit; the files still load
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.trace(model, example_input())
        with atomic_open(path, "wb") as f:
            torch.jit.save(scripted, f, _extra_files={f"{META}.json": json.dumps(meta)})


def save_onnx(model: Recognizer, path: Path, meta: dict[str, Any]) -> None:
    try:
        import onnx  # noqa: F401  (torch's exporter needs both)
        import onnxscript  # noqa: F401
    except ImportError:
        raise UserError(f"ONNX export needs the export extra: {EXTRA}") from None
    program = torch.onnx.export(
        model,
        (example_input(),),
        dynamo=True,
        verbose=False,
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_shapes={"pixels": {0: torch.export.Dim("batch")}},
    )
    program.model.metadata_props[META] = json.dumps(meta)
    with atomic_open(path, "wb") as f:
        f.write(program.model_proto.SerializeToString())


@cli_errors
def export_main(argv: list[str] | None = None, prog: str = "mnist-dist export") -> None:
    """mnist-dist export RUN [--format torchscript|onnx] [--out FILE]"""
    p = ArgumentParser(
        prog=prog,
        description="Write a run's model, normalisation included, as one file: raw uint8 "
        "(N, 28, 28) pixels in, (N, 10) log-probabilities out.",
    )
    p.add_argument("run", help="run folder (mnist-dist train --out)")
    p.add_argument("--format", choices=FORMATS, default="torchscript", help="default: torchscript")
    p.add_argument("--out", help="file to write (default: RUN/model.pt or RUN/model.onnx)")
    args = p.parse_args(argv)
    suffix = FORMATS[args.format]
    out = Path(args.out) if args.out else Path(args.run) / f"model{suffix}"
    if out.suffix != suffix:
        raise UserError(
            f"--out {out}: a {args.format} file must end in {suffix} (predict tells formats apart "
            "by the suffix)"
        )
    cfg, net = load_trained(Path(args.run))
    meta = dict(step=cfg.step, trial_id=cfg.trial_id(), config=cfg.to_dict(), **CONTRACT)
    model = Recognizer(net).eval()
    save = save_torchscript if args.format == "torchscript" else save_onnx
    try:
        save(model, out, meta)
    except OSError as e:
        raise UserError(f"cannot write {out} ({e.strerror or e}); fix --out") from None
    print(f"wrote {out} ({args.format}, {cfg.step}; uint8 (N, 28, 28) in, log-probs out)")


main = export_main
