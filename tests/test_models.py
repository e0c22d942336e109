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


def test_the_family_takes_its_shape_from_the_config():
    import torch
    from torch import nn

    from mnist_dist.config import TrainConfig

    assert count_params(build_model("family")) == 6706  # its recipe's 8-8 | 16-16 | 16, linear
    cfg = TrainConfig(step="family", width1=4, depth2=3, squeeze=6, head="conv").resolve()
    net = build_model(cfg.step, **cfg.shape())
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs].count((1, 1)) == 3  # a squeeze per pool, the head
    assert len(convs) == 2 + 3 + 1 + 3 and convs[0].out_channels == 4
    assert cfg.trial_id() != TrainConfig(step="family").trial_id()  # the shape is identity
    assert "width1=4" in cfg.label()


@pytest.mark.parametrize(
    "fields, fragment",
    [
        (dict(step="step7", width1=4), "add --step family"),
        (dict(step="family", width1=0), "--width1 must be in [1, 256]"),
        (dict(step="family", depth3=9), "--depth3 must be in [1, 8]"),
        (dict(step="family", squeeze=-1), "--squeeze must be in [0, 256]"),
        (dict(step="family", head="mlp"), "--head must be one of linear, conv"),
    ],
)
def test_bad_family_shapes_are_one_line_errors(fields, fragment):
    from mnist_dist.config import TrainConfig
    from mnist_dist.errors import UserError

    with pytest.raises(UserError, match=None) as e:
        TrainConfig(**fields).resolve()
    assert fragment in str(e.value), str(e.value)
