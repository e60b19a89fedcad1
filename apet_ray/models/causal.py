"""``CausalLM``: a decoder-only LM (Llama, Qwen2, Mistral, OPT, GPT-2, BLOOM) used
text-to-text, as ``Seq2SeqLM`` is, the target continuing the source; GPT-2's ``Conv1D``
layers become ``nn.Linear`` at wrap time."""

from __future__ import annotations

import torch
from torch import nn

from apet_ray.models.signature import accepts


class CausalLM(nn.Module):
    """A decoder-only LM used text-to-text, as ``Seq2SeqLM`` is: ``forward`` takes the source
    ids and the target ids (``labels``, -100 padded) and scores the target after the source;
    ``generate`` continues each source greedily. Batches come right-padded (``data.collate``);
    each row is re-laid out here with its target (or generation) right after its own tokens.
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = _conv1d_as_linear(backbone)
        self.prompt: nn.Module | None = None
        self._takes_positions = accepts(backbone.forward, "position_ids")  # BLOOM's ALiBi reads the mask alone
        self._keeps_logits = accepts(backbone.forward, "logits_to_keep")

    def _run(self, ids: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
        """Logits of the last ``keep`` positions. Only the target's positions are scored, so
        the LM head (vocabulary x width: a fifth of SmolLM2's step) runs on those alone."""
        embeds = self.backbone.get_input_embeddings()(ids)
        if self.prompt is not None:
            embeds, mask = self.prompt.prepend(embeds, mask)
        extra = {}
        if self._takes_positions:  # left padding: count real tokens only
            extra["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        if self._keeps_logits:
            extra["logits_to_keep"] = keep
        logits = self.backbone(inputs_embeds=embeds, attention_mask=mask, **extra).logits
        return logits[:, -keep:]  # the tokens' positions, never the soft prompt's

    def forward(self, input_ids, attention_mask, labels=None, **_) -> dict:
        lengths = attention_mask.sum(-1).tolist()
        targets = [[t for t in row if t != -100] for row in labels.tolist()] if labels is not None else None
        rows = [input_ids[i, :n].tolist() + (targets[i] if targets else []) for i, n in enumerate(lengths)]
        ids, mask = _left_pad(rows, input_ids.new_tensor, self.backbone.config.pad_token_id or 0)
        width = ids.shape[1]
        # the position before the longest target predicts its first token
        keep = width if targets is None else min(width, 1 + max(map(len, targets), default=0))
        logits = self._run(ids, mask, keep)
        out = {"logits": logits}
        if targets is not None:
            gold = torch.full_like(ids, -100)
            for i, t in enumerate(targets):
                if t:
                    gold[i, width - len(t):] = torch.tensor(t, device=ids.device)
            # kept position j (= width - keep + j) predicts token j + 1
            out["loss"] = nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                                      gold[:, width - keep + 1:].reshape(-1), ignore_index=-100)
        return out

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, max_new_tokens: int) -> torch.Tensor:
        """Greedy continuation for exactly ``max_new_tokens`` steps (finished rows emit padding):
        every FSDP rank joins the same collectives, as ``Seq2SeqLM.generate``."""
        config = self.backbone.config
        pad = config.pad_token_id or 0
        rows = [input_ids[i, :n].tolist() for i, n in enumerate(attention_mask.sum(-1).tolist())]
        ids, mask = _left_pad(rows, input_ids.new_tensor, pad)
        out = []
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        for _ in range(max_new_tokens):
            token = self._run(ids, mask, 1)[:, -1].argmax(-1)
            token = torch.where(done, pad, token)
            out.append(token)
            done |= token == config.eos_token_id
            ids = torch.cat([ids, token[:, None]], 1)
            mask = torch.cat([mask, (~done | (token == config.eos_token_id)).long()[:, None]], 1)
        return torch.stack(out, 1) if out else input_ids[:, :0]


def _conv1d_as_linear(backbone: nn.Module) -> nn.Module:
    """GPT-2's ``Conv1D`` is a Linear whose weight is stored (in, out): turned into an
    ``nn.Linear`` once, so the delta engine knows one layer type. On the meta device (a
    count, or an FSDP rank that receives its shards) nothing is copied."""
    from transformers.pytorch_utils import Conv1D

    for path, module in list(backbone.named_modules()):
        if not isinstance(module, Conv1D):
            continue
        in_f, out_f = module.weight.shape
        weight = module.weight
        linear = nn.Linear(in_f, out_f, bias=module.bias is not None, device=weight.device, dtype=weight.dtype)
        if not weight.is_meta:
            with torch.no_grad():
                linear.weight.copy_(weight.t())
                if module.bias is not None:
                    linear.bias.copy_(module.bias)
        linear.requires_grad_(weight.requires_grad)
        parent, _, name = path.rpartition(".")
        setattr(backbone.get_submodule(parent), name, linear)
    return backbone


def _left_pad(rows: list[list[int]], tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask
