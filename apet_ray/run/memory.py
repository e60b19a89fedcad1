"""Peak memory of this run: CUDA's allocator peak on a GPU, the peak RSS (VmHWM) on a CPU.

Both are reset when a run starts, because a reused Tune trial process runs several runs and
would otherwise report the largest of them all.
"""

from __future__ import annotations

import resource
from pathlib import Path

import torch


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
