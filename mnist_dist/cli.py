"""The ``mnist-dist`` command: one subcommand per task, each with its own ``--help``.

mnist-dist models [--json]
mnist-dist train --step step4 --out runs/s4
mnist-dist sweep jobs/smoke.toml --cluster slurm --wait
mnist-dist status runs/sweeps/smoke [--json]
mnist-dist tune jobs/goal_tune.toml --cluster slurm --workers 4 [--wait]
mnist-dist report runs/sweeps/smoke [--markdown FILE] [--plots DIR]
mnist-dist bench --step step4 [--json]
mnist-dist predict runs/s5 digit.png [--json] [--show-input DIR]
mnist-dist evaluate runs/s5 [--out DIR] [--json]
mnist-dist export runs/s5 --format torchscript|onnx
"""

from __future__ import annotations

import importlib
import json
import sys

from .errors import ArgumentParser, UserError, cli_errors

# subcommand -> (module of mnist_dist whose main(argv, prog) runs it, one-line help)
COMMANDS = {
    "train": ("train", "train one step model (Accelerate; CPU, GPUs, mixed precision)"),
    "models": ("cli", "list the registered step models and their parameter counts"),
    "sweep": ("sweeps.submit", "submit a sweep file's grid as job arrays (SLURM or local)"),
    "status": ("sweeps.status", "show the state of each trial in a sweep folder"),
    "tune": ("tune.command", "search hyperparameters and shapes (Optuna) on validation only"),
    "report": ("report.report", "mean, variance, std and 95% CI of test accuracy per group"),
    "bench": ("bench.bench", "time origin pipeline vs ours vs pure compute"),
    "predict": ("recognizer.predict", "the digit in each image (PNG/JPEG), with top-3 odds"),
    "evaluate": ("recognizer.evaluate", "a run's test accuracy per class, its confusions, errors"),
    "export": ("recognizer.export", "a run's model as one TorchScript or ONNX file"),
}


def models_main(argv: list[str], prog: str = "mnist-dist models") -> None:
    from .models import MODELS, build_model, count_params

    p = ArgumentParser(prog=prog, description=COMMANDS["models"][1])
    p.add_argument("--json", action="store_true", help="print a JSON list")
    args = p.parse_args(argv)
    rows = [
        dict(name=m.name, params=count_params(build_model(m.name)), description=m.description)
        for m in MODELS.values()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        print(f"{r['name']:<8} {r['params']:>9,}  {r['description']}")


def usage() -> str:
    lines = ["usage: mnist-dist COMMAND [options]   (mnist-dist COMMAND --help)", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


@cli_errors
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] == "--version":
        from . import __version__

        print(__version__)
        return
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        raise UserError(f"unknown command {name!r}; choose one of: {', '.join(COMMANDS)}")
    if name == "models":
        return models_main(rest)
    module = importlib.import_module(f"mnist_dist.{COMMANDS[name][0]}")
    entry = getattr(module, f"{name}_main", None) or module.main
    entry(rest, prog=f"mnist-dist {name}")


if __name__ == "__main__":
    main()
