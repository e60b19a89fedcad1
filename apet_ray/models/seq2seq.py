"""``Seq2SeqLM``: a T5-family model used text-to-text; labels are words, generation is
scored by the task's metric."""

from __future__ import annotations

import torch
from torch import nn
from transformers import T5ForConditionalGeneration


class Seq2SeqLM(nn.Module):
    def __init__(self, backbone: T5ForConditionalGeneration):
        super().__init__()
        self.backbone = backbone
        self.prompt: nn.Module | None = None

    def _encoder_inputs(self, input_ids, attention_mask):
        embeds = self.backbone.get_input_embeddings()(input_ids)
        if self.prompt is not None:
            embeds, attention_mask = self.prompt.prepend(embeds, attention_mask)
        return embeds, attention_mask

    def forward(self, input_ids, attention_mask, labels=None, **_) -> dict:
        embeds, mask = self._encoder_inputs(input_ids, attention_mask)
        out = self.backbone(inputs_embeds=embeds, attention_mask=mask, labels=labels)
        return {"logits": out.logits, "loss": out.loss}

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding for exactly ``max_new_tokens`` steps (finished rows emit padding).

        A fixed step count keeps every FSDP rank in the same collectives, which
        ``transformers``' early-stopping ``generate`` would not.
        """
        config = self.backbone.config
        embeds, mask = self._encoder_inputs(input_ids, attention_mask)
        encoded = self.backbone.encoder(inputs_embeds=embeds, attention_mask=mask)
        out = input_ids.new_full((input_ids.shape[0], 1), config.decoder_start_token_id)
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            logits = self.backbone(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=out).logits[:, -1]
            token = torch.where(done, config.pad_token_id, logits.argmax(-1))
            out = torch.cat([out, token[:, None]], dim=1)
            done |= token == config.eos_token_id
        return out[:, 1:]
