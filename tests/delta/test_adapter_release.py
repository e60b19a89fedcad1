"""The adapter as the release builds it: gelu_new (GELU's tanh form) between the projections;
APET matched to it (same op) keeps that activation; the release's N(0, 0.01) projections as
the option plugin_init="release"."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from apet_ray.delta import DeltaSpec, attach
from apet_ray.delta.ops import ACTIVATIONS, Plugin
from apet_ray.errors import UserError
from support import tiny_classifier


def test_the_adapter_uses_gelu_new_and_its_apet_twin_too():
    assert DeltaSpec.pet("adapter").activation == "gelu_new"
    assert DeltaSpec.apet("plugin", "discrete", match="adapter").activation == "gelu_new"
    assert DeltaSpec.apet("plugin", "discrete", match="lora").activation == "relu"  # no plugin twin: the default
    model = tiny_classifier()
    attach(model, DeltaSpec.pet("adapter"))
    assert {m.activation for m in model.modules() if isinstance(m, Plugin)} == {"gelu_new"}
    x = torch.linspace(-3, 3, 13)
    assert torch.allclose(ACTIVATIONS["gelu_new"](x), 0.5 * x * (1 + torch.tanh(0.7978845608 * (x + 0.044715 * x ** 3))))
    assert not torch.allclose(ACTIVATIONS["gelu_new"](x), F.gelu(x), atol=1e-6)


def _release(spec):
    return dataclasses.replace(spec, plugin_init="release").validated()


def test_the_release_init_draws_both_projections_from_n_0_001_and_is_seeded(batch):
    spec = _release(DeltaSpec.pet("adapter"))
    model = tiny_classifier()
    with torch.no_grad():
        before = model(**batch)["logits"]
    attach(model, spec)
    plugins = [m for m in model.modules() if isinstance(m, Plugin)]
    for name in ("down", "up"):
        values = torch.cat([getattr(m, name).values.detach() for m in plugins])
        assert abs(float(values.std()) - 0.01) < 1e-3 and abs(float(values.mean())) < 1e-3
    assert all(not m.up_bias.values.any() and not m.down_bias.values.any() for m in plugins)
    with torch.no_grad():
        assert not torch.equal(model(**batch)["logits"], before)  # a non-zero up projection moves outputs
    again = tiny_classifier()
    attach(again, spec)
    assert all(torch.equal(a.up.values, b.up.values)
               for a, b in zip(plugins, [m for m in again.modules() if isinstance(m, Plugin)]))
    # the default stays peft's: kaiming-uniform down, zero up
    default = tiny_classifier()
    attach(default, DeltaSpec.pet("adapter"))
    assert all(not m.up.values.any() for m in default.modules() if isinstance(m, Plugin))


def test_the_init_option_round_trips_and_leaves_older_specs_json_as_it_was():
    spec = _release(DeltaSpec.apet("plugin", "discrete", match="adapter"))
    assert DeltaSpec.from_json(spec.to_json()) == spec
    assert "plugin_init" not in DeltaSpec.pet("adapter").to_json()  # at its default: the old JSON, the old trial ids
    with pytest.raises(UserError, match="unknown plugin init"):
        dataclasses.replace(DeltaSpec.pet("adapter"), plugin_init="xavier").validated()
