"""peft as a reference implementation (tests only): same weights, same outputs, same count."""

import pytest
import torch

peft = pytest.importorskip("peft")

from apet_ray.delta import DeltaSpec, attach, count_deltas  # noqa: E402
from apet_ray.delta.layers import DeltaLinear  # noqa: E402
from support import tiny_bert, tiny_t5  # noqa: E402

TARGETS = {"bert": r".*attention\.self\.(query|value)", "t5": r".*SelfAttention\.(q|v)"}


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_lora_matches_peft(family, batch):
    make = tiny_bert if family == "bert" else tiny_t5
    ref = peft.get_peft_model(make(), peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS[family]))
    ours = make()
    attach(ours, DeltaSpec.pet("lora"))
    assert count_deltas(ours) == sum(p.numel() for p in ref.parameters() if p.requires_grad)

    # give both the same non-zero LoRA weights (B starts at zero, which would prove nothing)
    g = torch.Generator().manual_seed(0)
    lora_layers = {n: m for n, m in ref.base_model.model.named_modules() if hasattr(m, "lora_A")}
    ours_layers = {n: m for n, m in ours.named_modules() if isinstance(m, DeltaLinear)}
    assert set(lora_layers) == set(ours_layers)
    with torch.no_grad():
        for name, layer in lora_layers.items():
            A = torch.randn(layer.lora_A["default"].weight.shape, generator=g) * 0.1
            B = torch.randn(layer.lora_B["default"].weight.shape, generator=g) * 0.1
            layer.lora_A["default"].weight.copy_(A)
            layer.lora_B["default"].weight.copy_(B)
            ours_layers[name].lowrank.A.values.copy_(A.flatten())
            ours_layers[name].lowrank.B.values.copy_(B.flatten())
    kwargs = dict(batch)
    if family == "t5":
        kwargs["decoder_input_ids"] = batch["input_ids"][:, :4]
    with torch.no_grad():
        expected = ref(**kwargs)
        got = ours(**kwargs)
    key = "last_hidden_state" if family == "bert" else "logits"
    assert torch.allclose(got[key], expected[key], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got[key], make()(**kwargs)[key], atol=1e-3)  # the LoRA weights did act
