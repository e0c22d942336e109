"""launch/: every Accelerate config parses, and the CPU one launches a real run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from .conftest import REPO

CONFIGS = sorted((REPO / "launch").glob("*.yaml"))


def test_the_four_configs_are_shipped():
    names = {p.stem for p in CONFIGS}
    assert {"cpu", "single_gpu", "multi_gpu_bf16", "multi_gpu_fp16"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_as_an_accelerate_config(path):
    cfg = load_config_from_file(str(path))
    assert cfg.compute_environment.value == "LOCAL_MACHINE"
    if path.stem.startswith("multi_gpu"):
        assert cfg.distributed_type.value == "MULTI_GPU"
        assert cfg.mixed_precision == path.stem.rsplit("_", 1)[1]


@pytest.mark.slow
def test_cpu_config_launches_a_real_run(tiny_mnist, tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    out = tmp_path / "run"
    cmd = [str(accelerate), "launch", "--config_file", str(REPO / "launch" / "cpu.yaml"),
           "-m", "mnist_dist.train", "--epochs", "1", "--train-limit", "256",
           "--data-dir", str(tiny_mnist), "--out", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["device"] == "cpu" and result["world_size"] == 1
    assert result["mixed_precision"] == "no"


@pytest.mark.slow
def test_the_gpu_check_runs_end_to_end_as_a_dry_run(tmp_path):
    """launch/gpu_check.sh --dry-run: the GPU check's own script, every check, on CPU and
    tiny data, so that it is ready the day a GPU is lent (issue #26)."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    cmd = ["bash", str(REPO / "launch" / "gpu_check.sh"), "--dry-run", "--work",
           str(tmp_path / "work")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    r = json.loads((out / "gpu_check.json").read_text())
    assert r["dry_run"] and r["ok"] and r["device"] == "cpu"
    assert list(r["checks"]) == ["precision", "resume", "bench", "packs", "compile"]
    runs = {(x["step"], x["precision"]): x for x in r["checks"]["precision"]["runs"]}
    assert len(runs) == 6
    for step in ("step4", "step7"):  # each run says where it trained and in what dtype
        assert runs[step, "no"]["compute_dtype"] == "float32"
        assert runs[step, "bf16"]["compute_dtype"] == "bfloat16"
        assert runs[step, "bf16"]["data_device"] == "cpu" == runs[step, "no"]["device"]
        assert "fp16 needs a CUDA GPU" in runs[step, "fp16"]["refused"]
    resume = r["checks"]["resume"]  # killed after a checkpoint, resumed, bitwise the same
    assert resume["history_equal"] and 1 <= resume["resumed_after"] < 3
    assert "resuming" in resume["resume_line"]
    bench = r["checks"]["bench"]["steps"]
    assert [s["step"] for s in bench] == ["step4", "step7"]
    assert all(s["fp32"]["images_per_s"] > 0 and s["fp32"]["cpu_images_per_s"] > 0 for s in bench)
    packs = r["checks"]["packs"]["packs"]
    assert [p["seeds"] for p in packs] == [2, 4] and all(p["pack_seconds"] > 0 for p in packs)
    assert r["checks"]["compile"]["final_test_acc"] is not None


def test_the_gpu_check_refuses_an_unknown_mode_in_one_line():
    proc = subprocess.run(["bash", str(REPO / "launch" / "gpu_check.sh"), "--gpu"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "usage: bash launch/gpu_check.sh" in proc.stderr
