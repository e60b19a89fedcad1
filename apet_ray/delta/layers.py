"""Frozen layers that host deltas.

``DeltaLinear`` wraps a frozen ``nn.Linear`` and applies, in this order, a delta on its
weight (add-weight), a vector on its output (add: the bias delta), then its extras (a LowRank beside it, a Plugin after it, a
registered op's layer) -- any subset. ``AddedParam`` adds a masked delta to any parameter
of any other module (LayerNorm biases for BitFit, embedding rows) through
``torch.func.functional_call``. ``AddedOutput`` adds a masked vector to the output of a
module that has no bias to take it (an RMS norm). ``CrossPositionBias`` gives a T5 cross-attention the
relative-position table the release's BitFit trains.
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
        # the output rows bias_delta covers when not all (a fused q/k/v layer's, without the key's);
        # not in the state: the plan gives it again
        self.register_buffer("bias_rows", None, persistent=False)
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
            b = self.bias_delta().to(y.dtype)
            if self.bias_rows is not None:
                b = b.new_zeros(y.shape[-1]).index_copy(0, self.bias_rows, b)
            elif b.shape[-1] < y.shape[-1]:  # T5's LM-head bias covers the tokenizer's rows, not the padding
                b = F.pad(b, (0, y.shape[-1] - b.shape[-1]))
            y = y + b
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


class _Wrapping(nn.Module):
    """A module standing in for ``base``: attributes it lacks are the wrapped module's
    (``norm.weight``, ``attention.layer_idx`` ... as callers knew them)."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("base"), name)


class AddedOutput(_Wrapping):
    """Add (Eq. 14) on a module without a bias: ``module(x) + W~`` (a T5 or Llama RMS norm)."""

    def __init__(self, base: nn.Module):
        super().__init__(base)
        self.bias_delta: MaskedTensor | None = None

    def forward(self, *args, **kwargs):
        y = self.base(*args, **kwargs)
        return y if self.bias_delta is None else y + self.bias_delta().to(y.dtype)


class CrossPositionBias(_Wrapping):
    """A relative-position table added to a T5 cross-attention that has none (the release's
    ``modeling_t5.py`` gives every decoder cross-attention one, and BitFit trains them).

    Each layer adds its own table's bias to its scores, as HF's ``T5Attention.compute_bias``
    makes it (decoder side: unidirectional buckets of key position minus query position).
    HF itself computes a cross-attention bias only in the first layer and hands that one on,
    so in the release the 23 later tables of T5-XXL are counted but never used (zero
    gradient); here every table is used, and what this layer hands on to the next is the
    bias it received, without its own. Zero-initialised: attaching leaves outputs unchanged.
    """

    def __init__(self, base: nn.Module):
        super().__init__(base)
        self.relative_attention_bias: MaskedTensor | None = None

    def bias(self, query_length: int, key_length: int, past: int, device: torch.device) -> torch.Tensor:
        base = self.base
        context = torch.arange(query_length, device=device)[:, None] + past
        memory = torch.arange(key_length, device=device)[None, :]
        buckets = base._relative_position_bucket(memory - context, bidirectional=not base.is_decoder,
                                                 num_buckets=base.relative_attention_num_buckets,
                                                 max_distance=base.relative_attention_max_distance)
        table = self.relative_attention_bias().to(device)
        return table[buckets].permute(2, 0, 1).unsqueeze(0)  # (1, heads, query, key)

    def forward(self, hidden_states, mask=None, key_value_states=None, position_bias=None, cache=None, **kwargs):
        if self.relative_attention_bias is None or key_value_states is None:
            return self.base(hidden_states, mask=mask, key_value_states=key_value_states,
                             position_bias=position_bias, cache=cache, **kwargs)
        q = hidden_states.shape[1]
        # the decoder's self-attention cache already holds this step's q tokens
        past = max(int(cache.get_seq_length(self.base.layer_idx)) - q, 0) if cache is not None else 0
        own = self.bias(q, key_value_states.shape[1], past, hidden_states.device).to(hidden_states.dtype)
        given = position_bias if position_bias is not None else torch.zeros_like(own)
        out = self.base(hidden_states, mask=mask, key_value_states=key_value_states, position_bias=given + own,
                        cache=cache, **kwargs)
        return (out[0], given, *out[2:])
