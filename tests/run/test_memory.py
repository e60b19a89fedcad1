"""What a run trades for memory: recomputed activations take the same step, and models whose
blocks transformers cannot recompute are refused in one line."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from apet_ray.delta import DeltaSpec, attach
from apet_ray.errors import UserError
from apet_ray.models import build_model
from apet_ray.run.memory import recompute_activations

BATCHES = {
    "bert": dict(input_ids=torch.randint(5, 1000, (4, 12)), attention_mask=torch.ones(4, 12, dtype=torch.long),
                 labels=torch.tensor([0, 1, 1, 0])),
    "t5": dict(input_ids=torch.randint(5, 1000, (4, 12)), attention_mask=torch.ones(4, 12, dtype=torch.long),
               labels=torch.randint(5, 1000, (4, 3))),
    "llama": dict(input_ids=torch.randint(5, 1000, (4, 12)), attention_mask=torch.ones(4, 12, dtype=torch.long),
                  labels=torch.randint(5, 1000, (4, 12))),
}


def _loss_and_grads(kind: str, method: str, recompute: bool) -> tuple[float, dict[str, torch.Tensor]]:
    model, _ = build_model(f"tiny-{kind}", num_labels=2, seed=0)
    attach(model, DeltaSpec.pet(method))
    for m in model.modules():  # the presets train without dropout: the recompute must replay its masks
        if isinstance(m, nn.Dropout):
            m.p = 0.1
    if hasattr(model.backbone.config, "dropout_rate"):
        model.backbone.config.dropout_rate = 0.1
    if recompute:
        recompute_activations(model)
    model.train()
    torch.manual_seed(3)
    loss = model(**BATCHES[kind])["loss"]
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind,method", [("bert", "adapter"), ("t5", "lora"), ("llama", "lora"), ("t5", "bitfit")])
def test_recomputed_activations_take_the_same_step_with_dropout_on(kind, method):
    kept, recomputed = _loss_and_grads(kind, method, False), _loss_and_grads(kind, method, True)
    assert recomputed[0] == pytest.approx(kept[0], abs=1e-6)
    assert recomputed[1].keys() == kept[1].keys() and kept[1]
    for name, grad in kept[1].items():
        torch.testing.assert_close(recomputed[1][name], grad, atol=1e-6, rtol=1e-5)


def test_recompute_really_drops_the_saved_activations():
    # what autograd keeps for backward: with recompute, the blocks' inputs and what is outside them
    def saved(recompute: bool) -> tuple[int, int]:
        model, _ = build_model("tiny-t5", seed=0)
        attach(model, DeltaSpec.pet("lora"))
        if recompute:
            recompute_activations(model)
        model.train()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen: dict[int, int] = {}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(**BATCHES["t5"])["loss"]
        kept = [n for ptr, n in seen.items() if ptr not in params]
        return len(kept), sum(kept)

    (count, size), (all_count, all_size) = saved(True), saved(False)
    # the tiny model's logits (a 30,522-word vocabulary) outweigh its blocks: count as well as bytes
    assert count < 0.25 * all_count and size < all_size


def test_a_model_whose_blocks_cannot_be_recomputed_is_refused():
    model, _ = build_model("tiny-bert", num_labels=2, seed=0)
    model.backbone.supports_gradient_checkpointing = False
    with pytest.raises(UserError, match="activation checkpointing needs blocks"):
        recompute_activations(model)
