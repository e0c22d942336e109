"""``mnist-dist bench --time-to-target``: training seconds until a run first reaches 99.4%.

    mnist-dist bench --time-to-target --step step4 --seed 0 --out runs/bench/ttt-s4
    mnist-dist bench --time-to-target --result runs/s4/result.json

The first trains the step's recipe through ``train()`` (its epoch log goes to stderr, so
stdout stays JSON); the second reads any run's ``result.json``. Training seconds sum the
history's per-epoch ``seconds`` up to the first epoch at the target; evaluation seconds
(``eval_seconds``) are reported apart, and as unknown for result.json files without them.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path

from ..config import TARGET_ACC, Runtime, TrainConfig
from ..errors import UserError
from ..training.loop import train


def time_to_target(result: dict) -> dict:
    """Training seconds until test accuracy first reaches TARGET_ACC, from the history."""
    train_s = eval_s = 0.0
    hit = None
    for row in result["history"]:
        train_s += row["seconds"]
        # Older result.json files have no eval timing: then it is reported as unknown.
        eval_s = eval_s + row["eval_seconds"] if "eval_seconds" in row else math.nan
        if row["test_acc"] >= TARGET_ACC:
            hit = row
            break
    hist = result["history"]
    return dict(
        target_acc=TARGET_ACC,
        reached=hit is not None,
        epoch=hit["epoch"] if hit else None,
        test_acc=hit["test_acc"] if hit else None,
        train_seconds_to_target=train_s if hit else None,
        eval_seconds_to_target=(None if math.isnan(eval_s) else eval_s) if hit else None,
        step=result["step"],
        seed=result["seed"],
        epochs=result["epochs"],
        batch_size=result["batch_size"],
        final_test_acc=result["final_test_acc"],
        best_test_acc=max(h["test_acc"] for h in hist),
        train_seconds_all=sum(h["seconds"] for h in hist),
        eval_seconds_all=(
            sum(h["eval_seconds"] for h in hist) if all("eval_seconds" in h for h in hist) else None
        ),
        device=result["device"],
        mixed_precision=result["mixed_precision"],
        compile=result["config"].get("compile"),
    )


def run_time_to_target(args) -> dict:
    if args.result:
        path = Path(args.result)
        if not path.is_file():
            raise UserError(f"--result {path}: no such file (a run folder's result.json)")
        return time_to_target(json.loads(path.read_text()))
    cfg = TrainConfig(
        step=args.step,
        seed=args.seed,
        epochs=args.epochs,
        batch_size=args.batch_size,
        mixed_precision=args.mixed_precision,
        channels_last=args.channels_last,
        compile=args.compile,
    )
    out = args.out or str(Path("runs/bench/time-to-target") / cfg.trial_id())
    rt = Runtime(out=out, data_dir=args.data_dir, cpu=args.cpu, resume=True, progress=False)
    with contextlib.redirect_stdout(sys.stderr):  # train's epoch log; stdout stays JSON
        return time_to_target(train(cfg, rt))


def print_ttt(r: dict) -> None:
    head = f"time to {r['target_acc']}%: {r['step']} seed {r['seed']}, {r['device']}"
    if not r["reached"]:
        print(
            f"{head}: not reached in {r['epochs']} epochs "
            f"(final {r['final_test_acc']:.2f}%, best {r['best_test_acc']:.2f}%)"
        )
        return
    ev = r["eval_seconds_to_target"]
    print(
        f"{head}: epoch {r['epoch']} ({r['test_acc']:.2f}%), "
        f"{r['train_seconds_to_target']:.1f} s training"
        + (f" + {ev:.1f} s evaluation (not counted)" if ev is not None else "")
    )
