"""A run's memory: what it measures (CUDA's allocator peak on a GPU, the peak RSS on a CPU)
and what it can trade for it (recomputing activations; a CPU FSDP worker's heap is
``distributed``'s).

Peaks are reset when a run starts, because a reused Tune trial process runs several runs and
would otherwise report the largest of them all.
"""

from __future__ import annotations

import resource
from pathlib import Path

import torch
from torch import nn

from apet_ray.errors import UserError


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        if torch.cuda.is_initialized():  # a fresh process has no peak to clear (and would raise)
            torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak RSS (VmHWM)
    except OSError:
        pass  # elsewhere the peak is the process's since it started


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):  # peak RSS since the last reset, in kB
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def recompute_activations(model: nn.Module) -> None:
    """Keep only each transformer block's input for backward and recompute the rest there.

    Activation memory falls from every block's to about one block's, for about a third more
    compute; the numbers do not change (the recompute replays the forward's random state, so
    dropout draws the same masks). transformers checkpoints a block's ``forward``, inside its
    module hooks, so FSDP2 gathers the block once for the recompute and the backward together.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    from apet_ray.delta.architectures import blocks, family_of
    from apet_ray.delta.plan import backbone_of

    backbone, _ = backbone_of(model)
    stacked = [block for _, _, block in blocks(backbone, family_of(backbone))]
    plain = sorted({type(b).__name__ for b in stacked if not isinstance(b, GradientCheckpointingLayer)})
    if plain or not getattr(backbone, "supports_gradient_checkpointing", False):
        raise UserError(f"activation checkpointing needs blocks that transformers can recompute; "
                        f"{type(backbone).__name__}'s {', '.join(plain) or 'blocks'} cannot")
    backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    backbone.config.use_cache = False  # training keeps no cache (the recompute would refill it)
