"""Planning at small budgets: exact counts, and no counted value that can never train."""

import pytest
import torch

from apet_ray.delta import DeltaSpec, attach, count_deltas, make_plan
from apet_ray.delta.masked import MaskedTensor
from apet_ray.delta.plan import PAIRED
from apet_ray.errors import UserError
from support import tiny_classifier, tiny_seq2seq

BUDGETS = [2, 3, 5, 10, 17, 50, 200, 1000]


@pytest.mark.parametrize("family", ["bert", "t5"])
@pytest.mark.parametrize("op", ["concat", "plugin"])
@pytest.mark.parametrize("distribution", ["adjacent", "discrete"])
@pytest.mark.parametrize("budget", BUDGETS)
def test_every_pair_with_entries_has_entries_on_both_sides(family, op, distribution, budget):
    model = tiny_classifier() if family == "bert" else tiny_seq2seq()
    plan = make_plan(model, DeltaSpec.apet(op, distribution, budget=budget))
    assert plan.count == budget
    for p in plan.placements:
        k = {s.name: s.k for s in p.slots}
        paired = sum(k.values()) - k.get("up_bias", 0)
        if paired:
            assert all(k[name] >= 1 for name in PAIRED[p.kind]), (p.path, k)


def test_a_budget_no_pair_can_use_is_refused():
    with pytest.raises(UserError, match="too small"):
        make_plan(tiny_classifier(), DeltaSpec.apet("concat", "discrete", budget=1))
    # a plugin's up bias trains on its own: one value is enough
    assert make_plan(tiny_classifier(), DeltaSpec.apet("plugin", "discrete", budget=1)).count == 1


@pytest.mark.parametrize("op", ["concat", "plugin"])
@pytest.mark.parametrize("budget", [3, 10, 17])
def test_every_counted_value_moves_in_training(op, budget, batch):
    model = tiny_classifier()
    attach(model, DeltaSpec.apet(op, "discrete", budget=budget, seed=3))
    model.head.requires_grad_(False)
    assert count_deltas(model) == budget
    values = [m.values for m in model.modules() if isinstance(m, MaskedTensor)]
    before = [v.detach().clone() for v in values]
    # no weight decay: only a gradient may move a value
    optimizer = torch.optim.Adam(values, lr=1e-2)
    target = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    for _ in range(3):  # a zero-initialised side moves first, its partner from then on
        loss = ((model(**batch)["logits"] - target) ** 2).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for v, b in zip(values, before):
        assert (v.detach() != b).all(), f"{(v.detach() == b).sum().item()} of {v.numel()} values never moved"
