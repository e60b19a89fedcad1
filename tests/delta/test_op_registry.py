"""The op registry: one entry and a layer class add an op everywhere -- spec, plan with
exact counts, attach, training, checkpoints -- and unregistering it leaves the built-in ops."""

import pytest
import torch
from torch import nn

from apet_ray.delta import DeltaSpec, attach, count_deltas, load_deltas, save_deltas
from apet_ray.delta.layers import DeltaLinear, wrap
from apet_ray.delta.masked import MaskedTensor
from apet_ray.delta.methods import Method, register as register_method, unregister as unregister_method
from apet_ray.delta.registry import OPS, PLACEMENT_KINDS, Op, PlacementKind, Slot, register, unregister
from apet_ray.errors import UserError
from support import tiny_classifier


class Scale(nn.Module):
    """A toy op (IA³-like): the layer's output times 1 + s~, one factor per output feature."""

    def __init__(self, s: MaskedTensor | None):
        super().__init__()
        self.s = s

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y if self.s is None else y * (1 + self.s())


def _install(model, placement, spec, masked):
    layer = wrap(model, placement.path, DeltaLinear)
    layer.add_extra("scale", Scale(masked(layer.base.weight)["scale"]))


SCALE = Op("scale", defaults=("key", "value"), linear="scale", kinds=(
    PlacementKind("scale", slots=lambda m, size, param: [Slot("scale", (m.weight.shape[0],), "zeros")],
                  install=_install),
))


@pytest.fixture
def scale_op():
    register(SCALE)
    try:
        yield SCALE
    finally:
        unregister("scale")


def test_a_registered_op_is_planned_exactly_and_trains_alone(scale_op, batch):
    model = tiny_classifier()
    model.head.requires_grad_(False)
    before = model(**batch)["logits"].detach()
    plan = attach(model, DeltaSpec.apet("scale", "discrete", budget=50, seed=1))
    # key and value of 2 layers, 32 outputs each: 128 entries, 50 by largest remainder
    assert [(p.kind, s.k) for p in plan.placements for s in p.slots] == [("scale", 13), ("scale", 13),
                                                                       ("scale", 12), ("scale", 12)]
    assert plan.count == count_deltas(model) == 50
    assert torch.equal(model(**batch)["logits"], before)  # zero-initialised: outputs unchanged

    values = [m.s.values for m in model.modules() if isinstance(m, Scale)]
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    target = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    loss = ((model(**batch)["logits"] - target) ** 2).sum()
    loss.backward()
    with_grad = {id(p) for p in model.parameters() if p.grad is not None}
    assert with_grad == {id(v) for v in values} and all(bool(v.grad.ne(0).all()) for v in values)
    optimizer.step()
    assert ((model(**batch)["logits"] - target) ** 2).sum() != loss


def test_a_registered_op_serves_methods_matches_and_checkpoints(scale_op, batch, tmp_path):
    register_method(Method("ia3_toy", "IA3 (toy)", op="scale", positions=("key", "value", "ffn_in")))
    try:
        model = tiny_classifier()
        assert attach(model, DeltaSpec.pet("ia3_toy")).count == 2 * (32 + 32 + 48)
        match = attach(tiny_classifier(), DeltaSpec.apet("scale", "discrete", match="ia3_toy"))
        assert match.count == 2 * (32 + 32 + 48) and match.spec.positions == ("key", "value", "ffn_in")
    finally:
        unregister_method("ia3_toy")
    spec = DeltaSpec.apet("scale", "adjacent", budget=70, seed=2)
    trained = tiny_classifier()
    attach(trained, spec)
    with torch.no_grad():
        for m in trained.modules():
            if isinstance(m, Scale):
                m.s.values.normal_()
    path = save_deltas(trained, tmp_path / "deltas.safetensors")
    fresh = tiny_classifier()
    attach(fresh, spec)
    load_deltas(fresh, path)
    assert torch.equal(fresh(**batch)["logits"], trained(**batch)["logits"])


def test_an_op_refuses_positions_it_has_no_kind_for(scale_op):
    with pytest.raises(UserError, match="takes the add op"):
        attach(tiny_classifier(), DeltaSpec.apet("scale", budget=5, positions=("biases",)))
    with pytest.raises(UserError, match="a scale cannot sit on the input embeddings"):
        attach(tiny_classifier(), DeltaSpec.apet("scale", budget=5, positions=("embeddings",)))
    register(Op("unplaced", defaults=("embeddings",), kinds=()))  # no kind for linear layers
    try:
        with pytest.raises(UserError, match="op unplaced takes no linear positions, not 'query'"):
            attach(tiny_classifier(), DeltaSpec.apet("unplaced", budget=5, positions=("query",)))
    finally:
        unregister("unplaced")


def test_unregistering_leaves_the_builtin_ops():
    register(SCALE)
    unregister("scale")
    assert list(OPS) == ["add", "add-weight", "concat", "plugin"]
    assert list(PLACEMENT_KINDS) == ["bias", "param", "table", "output", "inplace", "weight", "prompt", "lowrank", "plugin"]
    with pytest.raises(UserError, match="unknown op 'scale'"):
        DeltaSpec.apet("scale", budget=5)


def test_registry_refuses_clashes():
    with pytest.raises(ValueError, match="registered already"):
        register(Op("add", defaults=("linear",), kinds=()))
    with pytest.raises(ValueError, match="kind 'weight' is registered already"):
        register(Op("other", defaults=("linear",), kinds=(PlacementKind("weight", SCALE.kinds[0].slots, _install),)))
    with pytest.raises(ValueError, match="not one of its kinds"):
        register(Op("other", defaults=("linear",), linear="weight", kinds=()))
    assert "other" not in OPS
