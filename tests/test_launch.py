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
