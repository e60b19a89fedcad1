"""CausalLM scores only the target's positions: the same loss as the whole sequence's logits."""

import torch
from torch import nn

from apet_ray.models import build_model


def whole_sequence_loss(model, input_ids, attention_mask, labels):
    # the reference: every position's logits, then the target positions picked out
    rows, golds = [], []
    for ids, n, lab in zip(input_ids.tolist(), attention_mask.sum(-1).tolist(), labels.tolist()):
        target = [t for t in lab if t != -100]
        rows.append(ids[:n] + target)
        golds.append([-100] * n + target)
    width = max(map(len, rows))
    pad = model.backbone.config.pad_token_id or 0
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    gold = torch.tensor([[-100] * (width - len(g)) + g for g in golds])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model.backbone(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), gold[:, 1:].reshape(-1),
                                       ignore_index=-100)


def batch():
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 300, (3, 7), generator=gen)
    attention_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    labels = torch.full((3, 3), -100)
    labels[0, :1], labels[1, :3], labels[2, :2] = 11, torch.tensor([12, 13, 14]), torch.tensor([15, 16])
    return input_ids, attention_mask, labels


def test_the_loss_over_kept_positions_is_the_whole_sequence_loss():
    model, _ = build_model("tiny-llama", seed=0)
    assert model._keeps_logits  # Llama takes logits_to_keep: the head runs on the target positions only
    input_ids, attention_mask, labels = batch()
    out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    assert out["logits"].shape[1] == 4  # longest target (3) + the position before it
    torch.testing.assert_close(out["loss"], whole_sequence_loss(model, input_ids, attention_mask, labels),
                               rtol=1e-6, atol=1e-6)


def test_a_backbone_without_logits_to_keep_gives_the_same_loss():
    model, _ = build_model("tiny-llama", seed=0)
    input_ids, attention_mask, labels = batch()
    kept = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)["loss"]
    model._keeps_logits = False  # as GPT-2-style backbones without the argument: logits sliced after the head
    sliced = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)["loss"]
    torch.testing.assert_close(kept, sliced, rtol=1e-6, atol=1e-6)
