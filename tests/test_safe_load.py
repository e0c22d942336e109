"""Opening a run folder never runs code (issue #20): every checkpoint and pack state is
read as plain weights, and a file that is not is refused in one line by predict, evaluate,
export and train --resume; TorchScript loads only with --trust-torchscript.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mnist_dist.config import TrainConfig
from mnist_dist.rundir import FORMAT, load_checkpoint

from .conftest import REPO, assert_one_line_error, cli_error, make_tiny_mnist, run_cli

OLD_RUN = REPO / "tests" / "fixtures" / "step6_onecycle_ema"  # written by 2e901ab


class RunsCode:
    """Unpickling this calls open(marker, "w"): a stand-in for any command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def old_run(tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    return run


def rewrite(path: Path, **changes) -> None:
    """The checkpoint at path with some entries replaced (written with pickle, as torch.save
    does: the reader must not trust it)."""
    ckpt = torch.load(path, weights_only=True)
    torch.save({**ckpt, **changes}, path)


def commands(run: Path, data: Path) -> list[list[str]]:
    """Every command that opens a run folder's checkpoint."""
    image = str(run / "digit0.png")
    train = ["train", "--step", "step6", "--seed", "3", "--epochs", "6", "--ema-decay", "0.9"]
    train += ["--headline", "ema", "--data-dir", str(data), "--no-download", "--cpu"]
    return [
        ["predict", str(run), image],
        ["evaluate", str(run), "--data-dir", str(data), "--no-download"],
        ["export", str(run), "--out", str(run.parent / "m.pt")],
        [*train, "--out", str(run), "--resume", "--no-progress"],
    ]


@pytest.mark.slow
def test_a_checkpoint_that_would_run_code_is_refused_by_every_command(old_run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    (old_run / "result.json").unlink()  # so that train --resume reads the checkpoint
    rewrite(old_run / "checkpoint.pt", model=RunsCode(marker))
    torch.load(old_run / "checkpoint.pt", weights_only=False)  # the file really is armed:
    assert marker.exists()  # a full unpickle runs it
    marker.unlink()
    data = make_tiny_mnist(tmp_path / "data")
    for argv in commands(old_run, data):
        line = cli_error(capsys, *argv)
        assert "checkpoint.pt is not plain weights" in line and "not loaded" in line, argv
        assert not marker.exists(), argv
    assert_one_line_error(run_cli(*commands(old_run, data)[0]), "is not plain weights")
    assert not marker.exists() and not (tmp_path / "m.pt").exists()


def test_a_pack_state_that_would_run_code_is_refused(tmp_path, capsys):
    data = make_tiny_mnist(tmp_path / "data")
    out, marker = tmp_path / "sweep", tmp_path / "pwned"
    argv = ["train", "--step", "step6", "--seeds", "0,1", "--epochs", "2", "--data-dir", str(data)]
    argv += ["--no-download", "--cpu", "--threads", "1", "--no-progress", "--out", str(out)]
    cfg = TrainConfig(step="step6", epochs=2).resolve()
    state = out / ".packs" / f"{cfg.config_hash()}-s0_1.pt"
    state.parent.mkdir(parents=True)
    torch.save(dict(seeds=[0, 1], config=cfg.to_dict(), model=RunsCode(marker)), state)
    line = cli_error(capsys, *argv, "--resume")
    assert f"{state} is not plain weights" in line
    assert not marker.exists()


def bad_checkpoints(run: Path) -> dict[str, tuple[Path, str]]:
    """name -> (run folder whose checkpoint.pt is bad that way, fragment of the error)."""
    good = (run / "checkpoint.pt").read_bytes()
    cases = {}
    for name in ("empty", "truncated", "garbage", "unknown_step", "newer", "not_ours"):
        folder = run.parent / name
        shutil.copytree(run, folder)
        cases[name] = folder
    (cases["empty"] / "checkpoint.pt").write_bytes(b"")
    (cases["truncated"] / "checkpoint.pt").write_bytes(good[: len(good) // 2])
    (cases["garbage"] / "checkpoint.pt").write_bytes(b"not a checkpoint")
    config = json.loads((run / "config.json").read_text())
    rewrite(cases["unknown_step"] / "checkpoint.pt", config={**config, "step": "step99"})
    rewrite(cases["newer"] / "checkpoint.pt", format=FORMAT + 1)
    torch.save([1, 2, 3], cases["not_ours"] / "checkpoint.pt")
    why = {
        "empty": "is empty",
        "truncated": "is truncated or not a checkpoint",
        "garbage": "is truncated or not a checkpoint",
        "unknown_step": "holds a model 'step99' that this mnist-dist does not know",
        "newer": "was written by a newer mnist-dist",
        "not_ours": "is not an mnist-dist checkpoint",
    }
    return {name: (folder, why[name]) for name, folder in cases.items()}


def test_empty_truncated_unknown_and_newer_checkpoints_are_one_line_each(old_run, tmp_path, capsys):
    data = make_tiny_mnist(tmp_path / "data")
    for name, (folder, why) in bad_checkpoints(old_run).items():
        (folder / "result.json").unlink()  # so that train --resume reads the checkpoint
        for argv in commands(folder, data):
            line = cli_error(capsys, *argv)
            assert f"{folder / 'checkpoint.pt'} " in line and why in line, (name, argv, line)
            if argv[0] == "train" and name in ("empty", "truncated", "garbage"):
                assert line.endswith("move it away to start the run over"), line


def test_a_checkpoint_written_before_the_change_loads_and_answers_as_before(old_run, capsys):
    from mnist_dist.cli import main

    saved = json.loads((old_run / "config.json").read_text())
    ckpt = load_checkpoint(old_run / "checkpoint.pt", TrainConfig.from_dict(saved))
    assert ckpt["epoch"] == 6 and ckpt["ema"] is not None and "format" not in ckpt
    main(["predict", str(old_run), str(old_run / "digit0.png"), "--json"])
    got = json.loads(capsys.readouterr().out)
    want = json.loads((OLD_RUN / "predict_2e901ab.json").read_text())
    assert [(r["digit"], r["top3"]) for r in got] == [(r["digit"], r["top3"]) for r in want]


@pytest.mark.slow
def test_evaluate_on_the_old_checkpoint_matches_its_output_then(old_run, tmp_path, capsys):
    from mnist_dist.cli import main

    data = make_tiny_mnist(tmp_path / "data")
    main(["evaluate", str(old_run), "--data-dir", str(data), "--no-download", "--json",
          "--out", str(tmp_path / "ev")])  # fmt: skip
    got = json.loads(capsys.readouterr().out)
    want = json.loads((OLD_RUN / "evaluate_2e901ab.json").read_text())
    for key in ("accuracy", "correct", "per_class", "confusion", "trial_id"):
        assert got[key] == want[key], key


def test_torchscript_is_refused_without_the_flag_and_read_with_it(old_run, tmp_path, capsys):
    from mnist_dist.cli import main

    model = tmp_path / "model.pt"
    main(["export", str(old_run), "--out", str(model)])
    image = str(old_run / "digit0.png")
    line = cli_error(capsys, "predict", str(model), image)
    assert "model.pt is TorchScript" in line and "--trust-torchscript" in line
    capsys.readouterr()
    main(["predict", str(model), image, "--json", "--trust-torchscript"])
    got = json.loads(capsys.readouterr().out)
    want = json.loads((OLD_RUN / "predict_2e901ab.json").read_text())
    assert got[0]["digit"] == want[0]["digit"]
