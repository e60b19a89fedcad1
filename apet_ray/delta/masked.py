"""The masked trainable weight W~ = W * m, stored sparsely.

Only the k entries where m = 1 exist as a parameter (``values``); their flat positions
are a buffer (``indices``). The dense W~ is materialised inside forward only, so
gradients and optimizer state are O(k), and an entry outside the mask is not a parameter
at all -- neither a gradient step nor weight decay can move it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from apet_ray.delta.masks import is_contiguous


class MaskedTensor(nn.Module):
    """k trainable values scattered into a zero tensor of ``shape`` on every forward."""

    def __init__(self, shape: tuple[int, ...], indices: torch.Tensor, init: torch.Tensor):
        """``init`` is the dense initial W (same shape); the mask keeps ``init[indices]``."""
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.numel_dense = math.prod(self.shape)
        if indices.is_meta:  # counting on the meta device: shapes only, nothing sampled
            values = torch.empty(indices.numel(), dtype=init.dtype, device="meta")
        else:
            values = init.reshape(-1)[indices.to(init.device)].detach().clone()
        self.values = nn.Parameter(values)
        self.register_buffer("indices", indices, persistent=True)
        self._refresh_layout()

    def _refresh_layout(self) -> None:
        # A contiguous run is materialised by padding, a scattered set by scatter; decided
        # once here so forward never syncs a device to look at the indices.
        self.run_start = int(self.indices[0]) if is_contiguous(self.indices) else None

    def set_indices(self, indices: torch.Tensor) -> None:
        self.indices.copy_(indices)
        self._refresh_layout()

    @property
    def k(self) -> int:
        return self.values.numel()

    @property
    def is_full(self) -> bool:
        return self.k == self.numel_dense

    def forward(self) -> torch.Tensor:
        v = self.values
        if self.run_start is not None:
            after = self.numel_dense - self.run_start - v.numel()
            if self.run_start == 0 and after == 0:
                return v.view(self.shape)
            return F.pad(v, (self.run_start, after)).view(self.shape)
        dense = v.new_zeros(self.numel_dense)
        return dense.scatter(0, self.indices, v).view(self.shape)

    def extra_repr(self) -> str:
        layout = "full" if self.is_full else ("adjacent" if self.run_start is not None else "discrete")
        return f"shape={self.shape}, k={self.k}, layout={layout}"
