"""A frozen LM head that stays sharded under FSDP: its rows are gathered a piece at a time.

As an FSDP2 unit, an untied head (t5-v1_1's, Llama's) is gathered whole at the end of
forward, the moment every activation of the step is alive, and kept gathered into backward:
the head's size twice over (the gather buffer and the unsharded copy) on top of the step's
peak. On the 2-rank CPU run of t5-v1_1-large that moment was the peak of every run
(docs/benchmarks.md section 7). A frozen head needs its weight only to compute the logits and
the gradient of its input, so here each rank keeps its rows (dim 0, as FSDP2 shards them),
and forward and backward each gather the head in pieces of about ``PIECE_BYTES``: piece k
is every rank's k-th block of rows, used and freed before the next. The ranks run the same
pieces in the same order whatever their inputs, as FSDP's own gathers do, so a generation
that runs on after a rank is done (transformers' ``synced_gpus``) keeps them in step.

The logits are the same dot products as the whole head's, computed in blocks.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import Shard, distribute_tensor

PIECE_BYTES = 16 << 20  # a gathered piece (all ranks' rows): 8 pieces for t5-v1_1-large's 131 MB head


class RowShardedHead(nn.Linear):
    """An ``nn.Linear`` without bias whose frozen weight is a DTensor sharded by rows.

    Made in place from a head by ``shard_head``; its weight keeps its name, so the loading,
    the frozen-weight checks and the state dict see the head as before.
    """

    compute_dtype: torch.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else self.compute_dtype
        local = self.weight.to_local().detach()
        with torch.autocast(device, enabled=False):
            return _GatheredInPieces.apply(x, local, self.out_features, dtype)


def shard_head(head: nn.Linear, mesh, compute_dtype: torch.dtype) -> None:
    """Turn the frozen, bias-free ``head`` into a ``RowShardedHead`` on ``mesh``: its weight
    (real or meta) becomes a DTensor sharded on dim 0, this rank's rows still to be loaded
    (``distributed._Loader`` fills them, reading only this rank's rows when streamed)."""
    assert type(head) is nn.Linear and head.bias is None and not head.weight.requires_grad
    meta = head.weight.detach().to("meta")
    head.weight = nn.Parameter(distribute_tensor(meta, mesh, [Shard(0)], src_data_rank=None), requires_grad=False)
    head.__class__ = RowShardedHead
    head.compute_dtype = compute_dtype


class _GatheredInPieces(torch.autograd.Function):
    """``x @ W.T`` for a W of which this rank holds rows ``[rank * S, (rank + 1) * S)`` (the
    last rank's padded with zero rows to S); the gradient of ``x`` only, W being frozen."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, local: torch.Tensor, rows: int, dtype: torch.dtype) -> torch.Tensor:
        world = dist.get_world_size()
        per_rank = math.ceil(rows / world)
        ctx.save_for_backward(x)
        ctx.local, ctx.rows, ctx.per_rank, ctx.dtype = local, rows, per_rank, dtype
        out = x.new_empty((*x.shape[:-1], world, per_rank), dtype=dtype)
        xc = x.to(dtype)
        for lo, hi, gathered in _pieces(local, per_rank, world, dtype):
            out[..., lo:hi] = F.linear(xc, gathered).unflatten(-1, (world, hi - lo))
        out = out.flatten(-2)
        return out if out.shape[-1] == rows else out[..., :rows].contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        world, per_rank = dist.get_world_size(), ctx.per_rank
        g = F.pad(grad.to(ctx.dtype), (0, world * per_rank - ctx.rows)).unflatten(-1, (world, per_rank))
        grad_x = torch.zeros(x.shape, dtype=ctx.dtype, device=x.device)
        for lo, hi, gathered in _pieces(ctx.local, per_rank, world, ctx.dtype):
            grad_x += g[..., lo:hi].flatten(-2) @ gathered
        return grad_x.to(x.dtype), None, None, None


def _pieces(local: torch.Tensor, per_rank: int, world: int, dtype: torch.dtype):
    """(lo, hi, W_piece) for each piece: rows ``lo:hi`` of every rank's block, gathered in rank
    order, ``(world * (hi - lo), d)`` in ``dtype``."""
    d = local.shape[-1]
    step = max(1, PIECE_BYTES // max(1, world * d * local.element_size()))
    for lo in range(0, per_rank, step):
        hi = min(per_rank, lo + step)
        mine = local[lo:hi]
        if mine.shape[0] < hi - lo:  # the last rank's short block
            mine = F.pad(mine, (0, 0, 0, hi - lo - mine.shape[0]))
        gathered = mine.new_empty((world * (hi - lo), d))
        dist.all_gather_single(gathered, mine.contiguous())
        yield lo, hi, gathered.to(dtype)
