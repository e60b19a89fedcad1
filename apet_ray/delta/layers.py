"""Frozen layers that host deltas.

``DeltaLinear`` wraps a frozen ``nn.Linear`` and applies, in this order, a delta on its
weight (add-weight), a vector on its output (add: the bias delta), then its extras (a LowRank beside it, a Plugin after it, a
registered op's layer) -- any subset. ``AddedParam`` adds a masked delta to any parameter
of any other module (LayerNorm biases for BitFit, embedding rows) through
``torch.func.functional_call``.
"""

from __future__ import annotations

from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from apet_ray.delta.functional import masked_add_linear
from apet_ray.delta.masked import MaskedTensor


W = TypeVar("W", bound=nn.Module)


def wrap(model: nn.Module, path: str, wrapper: type[W]) -> W:
    """The ``wrapper`` at ``path`` of ``model``: the module there, wrapped on first use."""
    module = model.get_submodule(path)
    if not isinstance(module, wrapper):
        module = wrapper(module)
        parent_path, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent_path), name, module)
    return module


class DeltaLinear(nn.Module):
    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.weight_delta: MaskedTensor | None = None
        self.bias_delta: MaskedTensor | None = None
        self.extras: list[str] = []  # child modules ``(x, y) -> y``, applied in this order

    def add_extra(self, name: str, module: nn.Module) -> None:
        # an attribute, not a ModuleDict: checkpoint keys stay <layer>.<name>.<tensor>
        setattr(self, name, module)
        self.extras.append(name)

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
        for name in self.extras:
            y = getattr(self, name)(x, y)
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
