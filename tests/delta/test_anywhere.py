"""Position ``any``: whole backbone tensors at random (seeded), half of the budget where the
matched method sits and half elsewhere, the last tensor of each half masked: exact counts."""

import json

import pytest
import torch

from apet_ray.cli import main
from apet_ray.delta import DeltaSpec, attach, count_deltas, make_plan
from apet_ray.delta.anywhere import _pet_tensors
from apet_ray.delta.masked import MaskedTensor
from apet_ray.delta.plan import backbone_of
from apet_ray.errors import UserError
from support import shared_or_skip, tiny_classifier, tiny_seq2seq


def _model(family):
    return tiny_classifier() if family == "bert" else tiny_seq2seq()


def _spec(distribution="discrete", seed=0, **kw):
    return DeltaSpec.apet("add-weight", distribution, positions=("any",), seed=seed, **kw)


def _key(p):  # (module path in the backbone, parameter)
    path = p.path.removeprefix("backbone.")
    return path, p.param or ("weight" if p.kind == "weight" else "bias")


@pytest.mark.parametrize("family", ["bert", "t5"])
@pytest.mark.parametrize("distribution", ["adjacent", "discrete"])
@pytest.mark.parametrize("target", [1, 7, 1000, 20_001, "lora", "adapter", "bitfit"])
def test_any_hits_the_budget_exactly_with_whole_tensors_half_at_the_method_s_positions(family, distribution, target):
    model = _model(family)
    kw = {"match": target} if isinstance(target, str) else {"budget": target}
    plan = attach(model, _spec(distribution, **kw))
    assert plan.count == count_deltas(model) == plan.requested
    assert sum(m.k for m in model.modules() if isinstance(m, MaskedTensor)) == plan.requested
    partial = [s for p in plan.placements for s in p.slots if s.k < s.numel]
    assert len(partial) <= 2  # the last tensor of each half
    backbone, _ = backbone_of(_model(family))  # unwrapped: where the tensors were
    at_pet = _pet_tensors(backbone, plan.family, plan.spec)
    k_pet = sum(p.slots[0].k for p in plan.placements if _key(p) in at_pet)
    sizes = {(path, name): p.numel() for path, name, p in
             ((n.rpartition(".")[0], n.rpartition(".")[2], p) for n, p in backbone.named_parameters())}
    capacity_pet = sum(sizes[t] for t in at_pet)
    capacity_rest = sum(sizes.values()) - capacity_pet - (backbone.shared.weight.numel() if family == "t5" else 0)
    # half there, unless a side holds less: then the other takes the rest
    assert k_pet == max(min(plan.requested // 2, capacity_pet), plan.requested - capacity_rest)


def test_same_seed_same_tensors_other_seed_other_tensors():
    def picks(seed):
        return [(p.kind, p.path, p.param, p.slots[0].k) for p in make_plan(tiny_classifier(), _spec(seed=seed, budget=5000)).placements]

    assert picks(0) == picks(0) and picks(0) != picks(1)


def test_every_picked_tensor_gets_a_gradient(batch):
    model = tiny_classifier()
    attach(model, _spec(budget=20_000, seed=2))
    model.head.requires_grad_(False)
    model(**batch)["logits"].pow(2).sum().backward()
    masked = [m for m in model.modules() if isinstance(m, MaskedTensor)]
    assert masked and all(m.values.grad is not None for m in masked)


def test_any_is_refused_with_another_op_beside_other_positions_and_above_the_backbone():
    with pytest.raises(UserError, match="use --op add-weight"):
        make_plan(tiny_classifier(), DeltaSpec.apet("add", budget=10, positions=("any",)))
    with pytest.raises(UserError, match="give it alone"):
        make_plan(tiny_classifier(), DeltaSpec.apet("add-weight", budget=10, positions=("any", "query")))
    with pytest.raises(UserError, match="larger than the whole backbone"):
        make_plan(tiny_classifier(), _spec(budget=10**9))


@pytest.mark.parametrize("config", ["bert-base-uncased", "t5-v1_1-base"])
@pytest.mark.parametrize("flag,value", [("--match", "lora"), ("--match", "adapter"), ("--budget", "123457")])
def test_any_is_exact_on_the_paper_s_configs(capsys, config, flag, value):
    cfg = str(shared_or_skip("configs", config))
    assert main(["params", "--model", cfg, "--method", "apet", "--op", "add-weight", "--positions", "any",
                 flag, value, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trainable_params"] == (int(value) if flag == "--budget" else out["requested_params"])
