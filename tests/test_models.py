"""The registry reproduces the origin study's models: parameter counts and shapes."""

import json

import pytest
import torch

from mnist_dist.config import RECIPES
from mnist_dist.models import MODELS, build_model, count_params

from .conftest import run_cli

ORIGIN_PARAMS = {"step1": 190_442, "step2": 18_258, "step3": 6_270, "step4": 7_074}


@pytest.mark.parametrize("name,params", ORIGIN_PARAMS.items())
def test_origin_param_counts(name, params):
    assert count_params(build_model(name)) == params


@pytest.mark.parametrize("name", list(MODELS))
def test_output_is_log_probabilities(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    out = model(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 10)
    assert torch.allclose(out.exp().sum(dim=1), torch.ones(5), atol=1e-5)


def test_every_model_has_a_recipe():
    assert set(RECIPES) == set(MODELS)


def test_models_cli_json_lists_every_step():
    proc = run_cli("models", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == set(MODELS)
    for name, params in ORIGIN_PARAMS.items():
        assert rows[name]["params"] == params
        assert rows[name]["description"]
