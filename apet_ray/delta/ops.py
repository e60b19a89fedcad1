"""The three APET operations, as modules built from masked tensors.

    Add          f(h) + W~1                 a vector on a layer's output (op add: BitFit's
                                            form)                          -> DeltaLinear.bias_delta / AddedParam
                 f(h; W + W~1)              a delta on a weight (op add-weight: sparse
                                            fine-tuning)                   -> DeltaLinear.weight_delta / AddedParam
    Concatenate  f([h ; W~2])               soft tokens before the input  -> PromptTokens
                 f(h) + a * h W~3 W~4       a low-rank pair beside a linear -> LowRank
    Plugin       f(h) + s(f(h) W~5) W~6     a bottleneck after a sub-layer -> Plugin

With all-ones masks these are BitFit, Prompt tuning, LoRA and the Houlsby adapter.
Each module owns only its masked tensors; ``DeltaLinear`` (layers.py) composes them on a
frozen linear layer, calling each as ``(x, y) -> y`` with the layer's input and output.
Where each goes, and how, is in registry.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from apet_ray.delta.masked import MaskedTensor

# gelu_new: GELU's tanh approximation, the release's adapter activation (HF's name for it)
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "gelu_new": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu}


class LowRank(nn.Module):
    """Concatenate, low-rank form: ``scale * (x @ A~^T) @ B~^T`` (peft's lora_A/lora_B layout).

    ``scale`` is alpha / rank, as in peft and loralib, so LoRA(r=8, alpha=16) matches them;
    APET's pairs keep LoRA's 2.0 at any rank (``registry.lowrank_scale``).
    """

    def __init__(self, A: MaskedTensor | None, B: MaskedTensor | None, scale: float):
        super().__init__()
        self.A, self.B, self.scale = A, B, scale

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.A is None or self.B is None:  # an empty factor makes the product zero
            return y
        return y + F.linear(F.linear(x, self.A()), self.B()) * self.scale


class Plugin(nn.Module):
    """Plugin: ``y + act(y @ W~5^T + b~5) @ W~6^T + b~6`` applied to a sub-layer's output y."""

    def __init__(
        self,
        down: MaskedTensor | None,
        down_bias: MaskedTensor | None,
        up: MaskedTensor | None,
        up_bias: MaskedTensor | None,
        bottleneck: int,
        activation: str = "relu",
    ):
        super().__init__()
        self.down, self.down_bias, self.up, self.up_bias = down, down_bias, up, up_bias
        self.bottleneck = bottleneck
        self.activation = activation

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d = y.shape[-1]
        down = self.down() if self.down is not None else y.new_zeros(self.bottleneck, d)
        h = F.linear(y, down, self.down_bias() if self.down_bias is not None else None)
        h = ACTIVATIONS[self.activation](h)
        out = y
        if self.up is not None:
            out = out + F.linear(h, self.up())
        if self.up_bias is not None:
            out = out + self.up_bias()
        return out


class PromptTokens(nn.Module):
    """Concatenate, prompt form: N soft tokens W~2 prepended to the input embeddings.

    Counted once (the encoder input for T5), as in the paper. Masked-out rows of the prompt
    are zero vectors that still occupy their positions.
    """

    def __init__(self, tokens: MaskedTensor):
        super().__init__()
        self.tokens = tokens

    @property
    def length(self) -> int:
        return self.tokens.shape[0]

    def prepend(self, embeds: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = embeds.shape[0]
        prompt = self.tokens().to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
        ones = attention_mask.new_ones(batch, self.length)
        return torch.cat([prompt, embeds], dim=1), torch.cat([ones, attention_mask], dim=1)
