"""Synthetic sweep results for the report tests: result.json-shaped dicts and folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mnist_dist.config import TARGET_ACC, TrainConfig


def fake_result(step: str, seed: int, accs: list[float], params: int, train_acc: float = 99.0):
    """A result.json-shaped dict for a run whose test accuracy per epoch is ``accs`` (%)."""
    cfg = TrainConfig(step=step, seed=seed, epochs=len(accs), lr=0.018)  # any step name
    history = [
        dict(epoch=i + 1, train_loss=0.1, train_acc=train_acc - (len(accs) - 1 - i), test_acc=a)
        for i, a in enumerate(accs)
    ]
    best = int(np.argmax(accs))
    return dict(
        step=step,
        seed=seed,
        params=params,
        epochs=len(accs),
        history=history,
        final_test_acc=accs[-1],
        best_test_acc=accs[best],
        best_epoch=best + 1,
        first_epoch_at_target=next((i + 1 for i, a in enumerate(accs) if a >= TARGET_ACC), None),
        trial_id=f"{step}-s{seed}-synthetic",
        config=cfg.to_dict(),
    )


def write_sweep(
    root: Path, results: list[dict], extra_ids: list[str] = (), name: str = "syn"
) -> Path:
    """A sweep folder as ``mnist-dist sweep`` leaves it: sweep.json and <trial>/result.json.

    ``extra_ids`` are expected trials with no result (the caller may add error.txt).
    """
    trials = [dict(trial_id=r["trial_id"], config=r["config"]) for r in results]
    trials += [dict(trial_id=t, config={}) for t in extra_ids]
    for r in results:
        folder = root / r["trial_id"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(r["config"]))
        (folder / "result.json").write_text(json.dumps(r))
    for t in extra_ids:
        (root / t).mkdir(parents=True, exist_ok=True)
    (root / "sweep.json").write_text(
        json.dumps(dict(name=name, file="x.toml", trials=trials, jobs=[]))
    )
    return root
