"""Planning at small budgets: exact counts, and no counted value that can never train."""

import dataclasses

import pytest
import torch

from apet_ray.delta import DeltaSpec, attach, count_deltas, make_plan
from apet_ray.delta.masked import MaskedTensor
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
            assert all(k[name] >= 1 for name in p.pair.sides), (p.path, k)


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


def _t5_batch(batch):
    labels = torch.randint(2, 120, (3, 4), generator=torch.Generator().manual_seed(2))
    return {**batch, "labels": labels}


@pytest.mark.parametrize("family", ["bert", "t5"])
@pytest.mark.parametrize("op", ["add-weight", "concat", "plugin"])
@pytest.mark.parametrize("distribution", ["adjacent", "discrete"])
@pytest.mark.parametrize("budget", [2, 10, 77, 500, 3000])
def test_every_counted_entry_gets_a_gradient_from_a_non_zero_state(family, op, distribution, budget, batch):
    # an entry whose partner is structurally empty (a B column whose A row has no entries)
    # has zero gradient whatever the values; any other entry has a non-zero one once the
    # zero-initialised sides are non-zero. GELU, not ReLU, in the plugin: a random tiny
    # model's attention output has one sign per feature over all tokens, so a ReLU unit
    # can be off for the whole batch -- dead by data, not by structure.
    model = tiny_classifier() if family == "bert" else tiny_seq2seq()
    spec = dataclasses.replace(DeltaSpec.apet(op, distribution, budget=budget, seed=4), activation="gelu")
    attach(model, spec)
    assert count_deltas(model) == budget
    masked = [m for m in model.modules() if isinstance(m, MaskedTensor)]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in masked:
            m.values.copy_(0.05 * torch.randn(m.values.shape, generator=g))  # small: no saturated unit
    out = model(**(batch if family == "bert" else _t5_batch(batch)))
    loss = out["loss"] if "loss" in out and out["loss"] is not None else out["logits"].square().sum()
    if family == "bert":
        loss = (out["logits"] * torch.randn(out["logits"].shape, generator=g)).sum()
    loss.backward()
    dead = sum(int((m.values.grad == 0).sum()) if m.values.grad is not None else m.values.numel() for m in masked)
    assert dead == 0, f"{dead} of {budget} counted entries get no gradient"


@pytest.mark.parametrize("op", ["concat", "plugin"])
def test_adjacent_pairs_train_one_aligned_block(op):
    model = tiny_classifier()
    plan = attach(model, DeltaSpec.apet(op, "adjacent", budget=700, seed=2))
    for p in plan.placements:
        if p.pair is None:
            continue
        layer = model.get_submodule(p.path)
        pair = layer.lowrank if p.kind == "lowrank" else layer.plugin
        first, second = (pair.A, pair.B) if p.kind == "lowrank" else (pair.down, pair.up)
        rows = set((first.indices // first.shape[1]).tolist())  # rank indices the row side trains
        cols = set((second.indices % second.shape[1]).tolist())  # ... and the column side
        assert rows == cols and len(rows) == p.block
        assert max(rows) - min(rows) + 1 == p.block  # one contiguous block
