"""The adapter as the release builds it: gelu_new (GELU's tanh form) between the projections;
APET matched to it (same op) keeps that activation."""

import torch
import torch.nn.functional as F

from apet_ray.delta import DeltaSpec, attach
from apet_ray.delta.ops import ACTIVATIONS, Plugin
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
