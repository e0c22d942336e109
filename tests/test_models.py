"""The registry: the origin study's models reproduced, and the smaller ones beyond it."""

import json

import pytest
import torch

from mnist_dist.config import RECIPES
from mnist_dist.models import MODELS, build_model, count_params

from .conftest import run_cli

ORIGIN_PARAMS = {"step1": 190_442, "step2": 18_258, "step3": 6_270, "step4": 7_074}
# Beyond the study: (exact count, the budget it must stay within).
NEW_PARAMS = {"step5": (7_578, 7_999), "step6": (3_808, 4_000), "step7": (7_784, 7_999)}
# Candidates of the issue #12 search, after published designs.
CANDIDATES = {
    "b7784": (7_784, 7_999),
    "c6198": (6_198, 7_999),
    "a7608": (7_608, 7_999),
    "d3702": (3_702, 4_000),
}


@pytest.mark.parametrize("name,params", ORIGIN_PARAMS.items())
def test_origin_param_counts(name, params):
    assert count_params(build_model(name)) == params


@pytest.mark.parametrize("name,count_and_budget", {**NEW_PARAMS, **CANDIDATES}.items())
def test_new_steps_stay_within_their_budgets(name, count_and_budget):
    params, budget = count_and_budget
    model = build_model(name)
    assert count_params(model) == params <= budget
    # BN affine counts: every parameter is trainable, none hides in a frozen buffer.
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", [*NEW_PARAMS, "b7784", "c6198", "d3702"])
def test_new_steps_pool_28_to_14_to_7(name):
    """Same-padded convs keep the size; two max-pools halve it before the GAP head."""
    sizes = []
    model = build_model(name)
    for m in model:
        if isinstance(m, torch.nn.MaxPool2d):
            m.register_forward_hook(lambda mod, i, out: sizes.append(tuple(out.shape[1:])))
    model.eval()(torch.randn(2, 1, 28, 28))
    assert [s[1:] for s in sizes] == [(14, 14), (7, 7)]


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
    news = {k: v[0] for k, v in {**NEW_PARAMS, **CANDIDATES}.items()}
    for name, params in {**ORIGIN_PARAMS, **news}.items():
        assert rows[name]["params"] == params
        assert rows[name]["description"]
