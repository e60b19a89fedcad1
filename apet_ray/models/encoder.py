"""``EncoderClassifier``: a BERT-like encoder (BERT, RoBERTa, MPNet, DistilBERT, DeBERTa) used
for classification (SA, NLI, PI) -- mean-pooled encoder states -> a linear head.

The head always trains and is counted in ``trainable_params``; ``delta_params`` excludes it
so that budgets compare structures, not heads.
"""

from __future__ import annotations

import torch
from torch import nn

from apet_ray.models.signature import accepts


class EncoderClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, num_labels: int, dropout: float | None = None):
        super().__init__()
        self.backbone = backbone
        if dropout is None:  # the backbone's own hidden dropout (0 in the tiny presets)
            dropout = getattr(backbone.config, "hidden_dropout_prob", 0.1)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(backbone.config.hidden_size, num_labels))
        self.prompt: nn.Module | None = None
        self._takes_types = accepts(backbone.forward, "token_type_ids")  # DistilBERT has no token types

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None) -> dict:
        embeds = self.backbone.get_input_embeddings()(input_ids)
        pool_mask = attention_mask
        if self.prompt is not None:
            embeds, attention_mask = self.prompt.prepend(embeds, attention_mask)
            # pool over the text only: prompt positions carry no input content
            pool_mask = torch.cat([torch.zeros_like(attention_mask[:, : self.prompt.length]), pool_mask], dim=1)
            if token_type_ids is not None:
                token_type_ids = torch.cat([torch.zeros_like(token_type_ids[:, :1]).expand(-1, self.prompt.length), token_type_ids], 1)
        types = {} if token_type_ids is None or not self._takes_types else {"token_type_ids": token_type_ids}
        hidden = self.backbone(inputs_embeds=embeds, attention_mask=attention_mask, **types).last_hidden_state
        weights = pool_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        logits = self.head(pooled)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits.float(), labels)
        return out
