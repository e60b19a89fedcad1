"""Frozen layers that host deltas.

``DeltaLinear`` wraps a frozen ``nn.Linear`` and applies, in this order, an Add on its
weight, an Add on its bias, a LowRank beside it and a Plugin after it -- any subset.
``AddedParam`` adds a masked delta to any parameter of any other module (LayerNorm biases
for BitFit, embedding rows) through ``torch.func.functional_call``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from apet_ray.delta.functional import masked_add_linear
from apet_ray.delta.masked import MaskedTensor
from apet_ray.delta.ops import LowRank, Plugin


class DeltaLinear(nn.Module):
    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.weight_delta: MaskedTensor | None = None
        self.bias_delta: MaskedTensor | None = None
        self.lowrank: LowRank | None = None
        self.plugin: Plugin | None = None

    # Transformers code sometimes reads these off the layer it expects to be a Linear.
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.base.weight, self.base.bias
        wd = self.weight_delta
        if wd is not None:
            # one product with W + W~; backward computes the values gradient only where the
            # mask is (the touched rows when adjacent) -- see apet_ray.delta.functional
            y = masked_add_linear(x, weight, bias, wd.values, wd.indices, wd.run_start)
        else:
            y = F.linear(x, weight, bias)
        if self.bias_delta is not None:
            y = y + self.bias_delta().to(y.dtype)
        if self.lowrank is not None:
            extra = self.lowrank(x)
            if extra is not None:
                y = y + extra
        if self.plugin is not None:
            y = self.plugin(y)
        return y


class AddedParam(nn.Module):
    """Add on a parameter of an arbitrary module: ``module(params with p + W~)``."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.deltas = nn.ModuleDict()  # parameter name -> MaskedTensor

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            # keep attribute access (e.g. ``embedding.weight``, ``norm.eps``) working
            return getattr(super().__getattr__("base"), name)

    def forward(self, *args, **kwargs):
        params = {name: getattr(self.base, name) + delta() for name, delta in self.deltas.items()}
        return functional_call(self.base, params, args, kwargs)
