"""APET's low-rank pairs train at LoRA's scale (alpha / 8 = 2.0) whatever rank their budget
picks: at alpha / rank, APET matched to LoRA (rank 16) trained at 1.0 and matched to the
adapter (rank 49 on MiniLM) at 0.33 -- a smaller step, not another structure."""

import pytest
import torch

from apet_ray.delta import DeltaSpec, attach
from apet_ray.delta.ops import LowRank
from support import tiny_classifier


def _scales(model):
    return {m.scale for m in model.modules() if isinstance(m, LowRank)}


@pytest.mark.parametrize("kw", [dict(match="lora"), dict(match="adapter"), dict(budget=500), dict(budget=3000, size=24)])
@pytest.mark.parametrize("distribution", ["adjacent", "discrete"])
def test_apet_concat_trains_at_lora_s_scale_at_any_rank(kw, distribution):
    lora = tiny_classifier()
    attach(lora, DeltaSpec.pet("lora"))
    model = tiny_classifier()
    plan = attach(model, DeltaSpec.apet("concat", distribution, **kw))
    assert plan.size != 8 or kw.get("budget") == 500
    assert _scales(model) == _scales(lora) == {2.0}


def _step(model, batch, lr=0.1):
    model.head.requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    model(**batch)["logits"].pow(2).sum().backward()
    optimizer.step()
    with torch.no_grad():
        return model(**batch)["logits"]


def test_apet_concat_and_lora_take_the_same_first_step_from_the_same_start(batch):
    lora = tiny_classifier()
    attach(lora, DeltaSpec.pet("lora"))
    lora_count = sum(p.numel() for p in lora.parameters() if p.requires_grad) - sum(p.numel() for p in lora.head.parameters())
    # rank 16 with full masks (twice LoRA's count at q and v): LoRA's A in rows 0..7, zeros
    # below, so the two compute the same function and differ only in the scale they train at
    apet = tiny_classifier()
    plan = attach(apet, DeltaSpec.apet("concat", "discrete", budget=2 * lora_count, size=16))
    assert plan.size == 16 and all(s.k == s.numel for p in plan.placements for s in p.slots)
    ours = [m for m in apet.modules() if isinstance(m, LowRank)]
    theirs = [m for m in lora.modules() if isinstance(m, LowRank)]
    with torch.no_grad():
        for a, b in zip(ours, theirs):
            a.A.values.view(16, -1).zero_()[:8].copy_(b.A.values.view(8, -1))
    before = lora(**batch)["logits"].detach()
    after_lora, after_apet = _step(lora, batch), _step(apet, batch)
    assert (after_lora - before).abs().max() > 1e-4  # the step moved the outputs
    assert torch.allclose(after_apet, after_lora, rtol=0, atol=1e-6)
