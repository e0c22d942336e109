"""Train one step model, or a pack of its seeds: the entry of every launcher.

    mnist-dist train --step step4 --out runs/s4
    python -m mnist_dist.train --step step4 --epochs 1 --train-limit 2000 --out /tmp/r
    torchrun --nproc_per_node 2 -m mnist_dist.train --step step4 --epochs 1 --out /tmp/r2
    accelerate launch --config_file launch/multi_gpu_bf16.yaml -m mnist_dist.train --step step4

The trainer itself is ``mnist_dist.training``; this module only parses and dispatches.
"""

from __future__ import annotations

from .errors import cli_errors


@cli_errors
def main(argv: list[str] | None = None, prog: str = "python -m mnist_dist.train") -> None:
    from .training.flags import parse_args

    cfg, rt = parse_args(argv, prog)
    if rt.seeds is not None:
        from .training.packed import train_seeds

        train_seeds(cfg, rt)
    else:
        from .training.loop import train

        train(cfg, rt)


if __name__ == "__main__":
    main()
