"""peft as a reference implementation (tests only): same weights, same outputs, same count."""

import pytest
import torch

peft = pytest.importorskip("peft")

from apet_ray.delta import DeltaSpec, attach, count_deltas  # noqa: E402
from support import same_lora_weights, tiny_bert, tiny_t5  # noqa: E402

TARGETS = {"bert": r".*attention\.self\.(query|value)", "t5": r".*SelfAttention\.(q|v)"}


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_lora_matches_peft(family, batch):
    make = tiny_bert if family == "bert" else tiny_t5
    ref = peft.get_peft_model(make(), peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS[family]))
    ours = make()
    attach(ours, DeltaSpec.pet("lora"))
    assert count_deltas(ours) == sum(p.numel() for p in ref.parameters() if p.requires_grad)

    same_lora_weights(ref, ours)
    kwargs = dict(batch)
    if family == "t5":
        kwargs["decoder_input_ids"] = batch["input_ids"][:, :4]
    with torch.no_grad():
        expected = ref(**kwargs)
        got = ours(**kwargs)
    key = "last_hidden_state" if family == "bert" else "logits"
    assert torch.allclose(got[key], expected[key], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got[key], make()(**kwargs)[key], atol=1e-3)  # the LoRA weights did act
