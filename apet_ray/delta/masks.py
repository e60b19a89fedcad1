"""Mask functions: where the k trainable entries of a masked weight W~ = W * m sit.

A mask is returned as the sorted flat (row-major) indices of its ones, never as a dense
{0,1} tensor: the trainable values and their indices are all a masked weight stores.

Signature of every mask function (register new ones in ``MASKS``)::

    mask_fn(shape: tuple[int, ...], k: int, generator: torch.Generator) -> torch.LongTensor

    shape      the dense shape of the weight the mask applies to
    k          exact number of ones, 1 <= k <= prod(shape)
    generator  a seeded CPU generator; the same seed must give the same mask
    returns    int64 tensor of k distinct, sorted flat indices into a tensor of ``shape``
"""

from __future__ import annotations

import math
from typing import Callable

import torch

MaskFn = Callable[[tuple[int, ...], int, torch.Generator], torch.Tensor]


def full(shape: tuple[int, ...], k: int, generator: torch.Generator) -> torch.Tensor:
    """All entries: the plain PET method (k must equal the tensor's size)."""
    n = math.prod(shape)
    if k != n:
        raise ValueError(f"a full mask of shape {shape} has exactly {n} ones, not {k}")
    return torch.arange(n)


def adjacent(shape: tuple[int, ...], k: int, generator: torch.Generator) -> torch.Tensor:
    """APET-Adjacent: one contiguous run of k entries that starts at a row boundary.

    In row-major order a run covers whole rows of the weight (plus part of one more), so
    the trainable entries are adjacent in rows; the first row is drawn at random.
    """
    n = math.prod(shape)
    _check(shape, k, n)
    row = shape[-1] if len(shape) > 1 else 1
    rows = n // row
    rows_needed = -(-k // row)
    first = int(torch.randint(rows - rows_needed + 1, (1,), generator=generator))
    start = min(first * row, n - k)
    return torch.arange(start, start + k)


def discrete(shape: tuple[int, ...], k: int, generator: torch.Generator) -> torch.Tensor:
    """APET-Discrete: k entries scattered uniformly at random (without replacement)."""
    n = math.prod(shape)
    _check(shape, k, n)
    if 4 * k >= n:  # dense enough that a permutation is cheapest
        return torch.randperm(n, generator=generator)[:k].sort().values
    # Sparse: draw with replacement and top up; avoids an O(n) permutation on 10^8-entry
    # weights. Expected draws are about k * (1 + k / n).
    picked = torch.empty(0, dtype=torch.long)
    while picked.numel() < k:
        extra = torch.randint(n, (k - picked.numel() + 16,), generator=generator)
        picked = torch.cat([picked, extra]).unique(sorted=False)
    # unique() sorts on CPU, which would bias the truncation towards small indices:
    # shuffle before keeping k of them.
    picked = picked[torch.randperm(picked.numel(), generator=generator)[:k]]
    return picked.sort().values


def _check(shape: tuple[int, ...], k: int, n: int) -> None:
    if not 1 <= k <= n:
        raise ValueError(f"a mask of shape {shape} holds 1..{n} ones, not {k}")


MASKS: dict[str, MaskFn] = {"full": full, "adjacent": adjacent, "discrete": discrete}


# ---- aligned blocks for Adjacent pairs (see plan._align_pairs) --------------------------

def row_run(shape: tuple[int, int], k: int, first_row: int) -> torch.Tensor:
    """k entries of a 2-D tensor in row-major order from the start of ``first_row``."""
    start = first_row * shape[1]
    return torch.arange(start, start + k)


def column_run(shape: tuple[int, int], k: int, first_col: int) -> torch.Tensor:
    """k entries of a 2-D tensor in column-major order from the top of ``first_col``:
    whole columns, then part of one, as flat row-major indices (sorted)."""
    p = torch.arange(k)
    return ((p % shape[0]) * shape[1] + first_col + p // shape[0]).sort().values


def is_contiguous(indices: torch.Tensor) -> bool:
    """True when sorted flat indices form one run (start, start+1, ...)."""
    if indices.numel() == 0 or indices.is_meta:
        return False
    return int(indices[-1] - indices[0]) + 1 == indices.numel()
