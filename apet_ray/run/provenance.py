"""What produced a run, recorded with it: the code (apet-ray's version and git commit, or
"not a checkout"), the libraries, and the machine -- the fields peft's method comparison
records, so a trials row can be traced and compared across machines."""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

LIBRARIES = ("torch", "transformers", "ray", "peft", "datasets", "safetensors")


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    found = {"apet-ray": _version("apet-ray"), "commit": _commit(), "python": platform.python_version()}
    return {**found, **{name: _version(name) for name in LIBRARIES}}


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _commit() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "not a checkout"
    if done.returncode != 0:
        return "not a checkout"
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return done.stdout.strip() + ("+dirty" if dirty else "")


def device_name(device) -> str:
    """The GPU's name, or the CPU's model (``/proc/cpuinfo``; the platform's word elsewhere)."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
