"""The run folder: its file names, its checkpoint (written and read), its result.

A run folder (``mnist-dist train --out``, or a sweep's ``DIR/<trial_id>/``) holds
``config.json`` (at start), ``checkpoint.pt`` (each epoch), ``result.json`` (at the end),
``error.txt`` (when a sweep trial raised) and ``wandb_run.json`` (the W&B run id and the
last epoch W&B received). A pack of seeds keeps its resume state in ``DIR/.packs/``.
Everything is written through ``fsio.atomic_open``. While a trainer trains the folder, its
rank 0 holds an OS lock on ``.train.lock`` there (``trial_locks``): one trainer per folder.

Checkpoints hold plain weights only: tensors, numbers, strings, lists and dicts (the
config as a dict, the history as lists). ``read_checkpoint`` opens them with
``torch.load(weights_only=True)``, so a file from someone else's run folder that was built
to run code when unpickled is refused in one line and nothing in it runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import socket
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .errors import UserError
from .fsio import atomic_open

CONFIG, CHECKPOINT, RESULT, ERROR = "config.json", "checkpoint.pt", "result.json", "error.txt"
WANDB_STATE = "wandb_run.json"
# The checkpoint's layout. Files written before the field existed are format 1 too; a
# reader refuses a higher number (a newer mnist-dist) rather than misreading it.
FORMAT = 1
# result.json's state: "done", or why the trainer's per-epoch hook stopped the run early
STOPPED = ("diverged", "pruned")
# A seed that ends below this final accuracy (percent) collapsed: it learned nothing (chance
# is 10%), a dead net rather than a bad recipe. It still counts in n; status, the report
# and the plots name it, by this one rule (``collapsed``).
COLLAPSED_BELOW = 20.0
# final_test_acc is None for a tuning run that never scored the test set (test_eval never)
REQUIRED = {"step": str, "params": int, "final_test_acc": (int, float, type(None)), "config": dict}


TRAIN_LOCK = ".train.lock"  # flock'd by the trainer of the folder; names its holder


class FolderBusy(UserError):
    """Another live process trains this folder (a sweep trial must not write error.txt)."""


@contextlib.contextmanager
def trial_locks(folders: list[Path]) -> Iterator[None]:
    """Held by rank 0 while it trains ``folders`` (a pack: one per seed). flock, not a
    lock file's existence: the kernel drops it with its process, so after a SIGKILL (a
    lost node, the OOM killer) the next trainer gets it at once. A second trainer of a
    held folder gets one line naming the holder, and writes nothing there."""
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun's and submitit's other ranks
        yield
        return
    with contextlib.ExitStack() as stack:
        for folder in folders:
            fd = os.open(folder / TRAIN_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            stack.callback(os.close, fd)  # closing the descriptor releases the lock
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                raise FolderBusy(
                    f"{folder} is being trained by another process ({holder}); let it finish, "
                    "or train into another --out"
                ) from None
            except OSError as e:  # a filesystem without flock (Lustre mounted noflock)
                print(f"mnist-dist: warning: {folder}: no OS lock here ({e.strerror}); "
                      "nothing stops a second trainer of this folder", file=sys.stderr)  # fmt: skip
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield


def collapsed(final_acc: float | None) -> bool:
    """Whether a seed's final accuracy (percent) says it collapsed (COLLAPSED_BELOW)."""
    return final_acc is not None and final_acc < COLLAPSED_BELOW


def read_result(path: Path) -> dict[str, Any]:
    """One result.json; ValueError with a short reason when it is unreadable or incomplete."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    for key, kind in REQUIRED.items():
        if not isinstance(data.get(key), kind):
            raise ValueError(f"missing or bad {key!r}")
    if not isinstance(data.get("history"), list):
        raise ValueError("missing or bad 'history'")
    data.setdefault("epochs", len(data["history"]))
    data.setdefault("state", "done")  # written before the field existed: finished runs
    if data["state"] not in ("done", *STOPPED):
        raise ValueError(f"unknown state {data['state']!r}")
    return data


def result_config(result: dict[str, Any]) -> TrainConfig:
    """The run's TrainConfig; keys an older run lacks take their defaults, as in its id.
    An older config has no world_size: its result.json recorded the processes it ran on."""
    data = dict(result["config"])
    data.setdefault("world_size", result.get("world_size") or 1)
    return TrainConfig.from_dict(data, where="result.json config")


def error_line(folder: Path) -> str | None:
    """The last line of a failed trial's traceback, i.e. the exception."""
    path = folder / ERROR
    if not path.is_file():
        return None
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    if not lines:
        return "failed (empty error.txt)"
    if lines[0].startswith("rank ") and len(lines) > 1:  # "rank 1 on n1 (job 7) failed:"
        return f"{lines[0].removesuffix(' failed:')}: {lines[-1]}"
    return lines[-1]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """One file, atomic: a preempted write leaves the previous epoch's checkpoint intact."""
    import torch

    with atomic_open(path, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)


def read_checkpoint(path: Path, fix: str = "move it away and retrain the run") -> dict[str, Any]:
    """A checkpoint or pack state as plain data, or one line naming the file and the fix.

    ``torch.load(weights_only=True)`` unpickles tensors and plain containers only: a file
    that needs any other class (a pickle built to run a command, say) raises before
    anything in it runs. ``fix`` ends the line for a file that is empty or truncated.
    """
    import torch

    try:
        if path.stat().st_size == 0:
            raise UserError(f"{path} is empty (an interrupted copy?); {fix}")
        if not zipfile.is_zipfile(path):  # torch.save writes a zip; a cut one has no index
            raise zipfile.BadZipFile("no zip index")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(
            f"{path} is not plain weights: opening it would unpickle objects that can run "
            "code, so it was not loaded; use a checkpoint written by mnist-dist train"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        kind = type(e).__name__
        raise UserError(f"{path} is truncated or not a checkpoint ({kind}); {fix}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("config"), dict):
        raise UserError(f"{path} is not an mnist-dist checkpoint (no config); {fix}")
    version = ckpt.get("format", 1)
    if not isinstance(version, int) or version > FORMAT:
        raise UserError(
            f"{path} was written by a newer mnist-dist (checkpoint format {version}, this "
            f"version reads up to {FORMAT}); upgrade mnist-dist to read it"
        )
    from .models import MODELS

    step = ckpt["config"].get("step")
    if step not in MODELS:
        raise UserError(
            f"{path} holds a model {step!r} that this mnist-dist does not know (known: "
            f"{', '.join(MODELS)}); read it with the mnist-dist version that trained it"
        )
    return ckpt


def load_checkpoint(path: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    """The run folder's checkpoint, if any, after checking it belongs to this run."""
    if not path.is_file():
        return None
    ckpt = read_checkpoint(path, fix="move it away to start the run over")
    saved = TrainConfig.from_dict(
        {"world_size": ckpt.get("world_size", 1), **ckpt["config"]}, where=str(path)
    )
    if saved.world_size != cfg.world_size:
        raise UserError(
            f"{path} was written by {saved.world_size} process(es), this run has "
            f"{cfg.world_size} (batch size is per process); resume with "
            f"{saved.world_size}, or use a new --out to start over"
        )
    if saved.identity() != cfg.identity():
        raise UserError(f"{path} was written by a different config; use a new --out to start over")
    return ckpt


def checkpoint_state(net, optimizer, scheduler, accelerator, history, cfg, wall, ema=None):
    """Everything a resumed run needs to continue exactly: one file, see save_checkpoint.

    The data order and augmentation are seeded per (seed, epoch) and need no state; the
    global RNG (dropout, if a model has it) and fp16's GradScaler do.
    """
    import torch

    scaler = getattr(accelerator, "scaler", None)
    return dict(
        epoch=len(history),
        model=net.state_dict(),
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        scaler=scaler.state_dict() if scaler is not None else None,
        ema=ema.state_dict() if ema is not None else None,  # AveragedModel, with n_averaged
        rng=torch.get_rng_state(),
        cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        history=history,
        config=cfg.to_dict(),
        world_size=cfg.world_size,
        wall_seconds=wall,
    )


def restore(ckpt, net, optimizer, scheduler, accelerator, out: Path, ema=None):
    """Load a checkpoint into the fresh objects; (history so far, wall seconds so far)."""
    import torch

    if not ckpt:
        return [], 0.0
    net.load_state_dict(ckpt["model"])
    if ema is not None:
        ema.load_state_dict(ckpt["ema"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler = getattr(accelerator, "scaler", None)
    scale = ""
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
        scale = f" (fp16 loss scale {scaler.get_scale():g})"  # what a resume carried on
    if ckpt.get("rng") is not None:
        torch.set_rng_state(ckpt["rng"])
    if ckpt.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
    accelerator.print(f"resuming {out} after epoch {ckpt['epoch']}{scale}")
    return ckpt["history"], float(ckpt.get("wall_seconds", 0.0))


def headline_weights(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The state_dict of the weights the recipe reports: the EMA of the weights where the
    config's ``headline`` says "ema", else the trained weights themselves."""
    if ckpt["config"].get("headline", "model") == "ema" and ckpt.get("ema"):
        # torch.optim.swa_utils.AveragedModel: the net under "module.", plus "n_averaged"
        return {k[7:]: v for k, v in ckpt["ema"].items() if k.startswith("module.")}
    return ckpt["model"]


def load_trained(folder: Path):
    """(TrainConfig, model in eval mode on CPU with its headline weights) of a run folder;
    a one-line error when the folder holds no readable checkpoint. For predict, evaluate,
    export."""
    from .models import build_model

    path = folder / CHECKPOINT
    if not path.is_file():
        raise UserError(
            f"{folder} holds no {CHECKPOINT}: give a run folder written by `mnist-dist train`"
        )
    ckpt = read_checkpoint(path, fix="copy it again, or retrain the run")
    cfg = TrainConfig.from_dict(ckpt["config"], where=str(path))
    net = build_model(cfg.step, **cfg.resolve().shape())
    try:
        net.load_state_dict(headline_weights(ckpt))
    except (RuntimeError, KeyError, TypeError) as e:
        raise UserError(f"{path} does not hold {cfg.step}'s weights ({type(e).__name__}); "
                        "retrain the run") from None  # fmt: skip
    return cfg, net.eval()
