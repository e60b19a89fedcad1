"""The compiled sampled-gradient kernel (``csrc/sampled_grad.cpp``), built on first use.

``sampled_dots(g, x, indices)`` is ``(g^T @ x).view(-1)[indices]`` for sorted flat indices
without the dense product: the values gradient of a discrete weight delta on CPU (see
``functional.values_grad_path``). The extension is compiled with the machine's own C++
compiler through ``torch.utils.cpp_extension`` at the first backward that wants it, not at
import (a build takes tens of seconds), and cached under
``$XDG_CACHE_HOME/apet-ray/extensions`` (default ``~/.cache``), so later processes only load
it; cpp_extension's lock file keeps processes that start together from building it twice.

Where it cannot be built -- no compiler, no ninja, a failed build -- ``available()`` is
False and the callers keep PyTorch's own paths. ``APET_RAY_SAMPLED_KERNEL`` overrides:
``off`` always takes the fallback, ``on`` makes an unavailable kernel an error, unset (or
``auto``) builds when it can. Either way one line per process says which path runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

ENV_VAR = "APET_RAY_SAMPLED_KERNEL"
MODES = ("auto", "on", "off")
SOURCE = Path(__file__).resolve().parent / "csrc" / "sampled_grad.cpp"
EXTENSION_NAME = "apet_ray_sampled_grad"
# -march=native: it is built on the machine that runs it; the CPU's flags are part of the
# cache key (below), so a cache shared across different machines never loads a foreign build
CFLAGS = ("-O3", "-march=native", "-fopenmp")
LDFLAGS = ("-fopenmp",)


@dataclass(frozen=True)
class KernelState:
    """What this process runs: the loaded extension, or why not."""

    module: ModuleType | None
    reason: str  # the fallback's cause; "" when the kernel loaded
    seconds: float = 0.0  # spent building or loading
    built: bool = False  # compiled now (else loaded from the cache)
    directory: Path | None = None

    @property
    def available(self) -> bool:
        return self.module is not None

    def describe(self) -> str:
        if self.module is not None:
            how = f"built in {self.seconds:.0f} s" if self.built else f"loaded in {self.seconds:.1f} s"
            return f"apet-ray: sparse weight delta gradients use the compiled sampled kernel ({how}, cached at {self.directory})"
        return f"apet-ray: sparse weight delta gradients use PyTorch's gathered/dense paths: {self.reason}"


_state: KernelState | None = None
_lock = threading.Lock()


def mode() -> str:
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{ENV_VAR}={value!r}: expected one of {', '.join(MODES)}")
    return value


def state() -> KernelState:
    """The kernel, built or loaded on the first call in this process (thread-safe)."""
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                _state = _load(mode())
                print(_state.describe(), file=sys.stderr, flush=True)
    return _state


def available() -> bool:
    return not _held_off and state().available


_held_off = 0


@contextlib.contextmanager
def disabled():
    """PyTorch's paths inside, whatever is built: the same step measured both ways in one
    process (benchmarks/step_time.py)."""
    global _held_off
    _held_off += 1
    try:
        yield
    finally:
        _held_off -= 1


def reset() -> None:
    """Forget the state (tests: the next call reads the environment again)."""
    global _state
    with _lock:
        _state = None


def sampled_dots(g: torch.Tensor, x: torch.Tensor, indices: torch.Tensor, block: int = 0) -> torch.Tensor:
    """``(g^T @ x).view(-1)[indices]`` for g (T, out_f), x (T, in_f) of one floating dtype on
    CPU and strictly increasing int64 ``indices``; fp32 for fp32 / bf16 / fp16 inputs, fp64 for
    fp64. ``block``: tokens per tile (0: sized to the cache)."""
    st = state()
    if st.module is None:
        raise RuntimeError(st.describe())
    return st.module.sampled_dots(g, x, indices, block)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "apet-ray" / "extensions"


def build_directory(source: bytes) -> Path:
    """``<cache>/<torch version>-<hash>``: the hash covers what makes a build reusable -- the
    source, the flags, the Python ABI and the CPU (for -march=native)."""
    key = hashlib.sha256()
    for part in (source, " ".join(CFLAGS + LDFLAGS).encode(), sys.version.encode(), _cpu_signature().encode()):
        key.update(part)
        key.update(b"\0")
    return cache_root() / f"{torch.__version__}-{key.hexdigest()[:16]}"


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):  # x86 / arm
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _compiler() -> str | None:
    cxx = os.environ.get("CXX")  # what cpp_extension itself compiles with
    if cxx:
        return shutil.which(cxx)
    return shutil.which("c++") or shutil.which("g++")


def _load(requested: str) -> KernelState:
    if requested == "off":
        return KernelState(None, f"{ENV_VAR}=off")
    st = _build()
    if st.module is None and requested == "on":
        raise RuntimeError(f"{ENV_VAR}=on but the sampled kernel is unavailable: {st.reason}")
    return st


def _build() -> KernelState:
    if not SOURCE.is_file():
        return KernelState(None, f"{SOURCE} is missing from the installed package")
    if _compiler() is None:
        why = f"CXX={os.environ['CXX']} not found" if os.environ.get("CXX") else "no C++ compiler found (set CXX)"
        return KernelState(None, why)
    from torch.utils import cpp_extension  # imports setuptools: only when a build is wanted

    if not cpp_extension.is_ninja_available():
        return KernelState(None, "ninja is not installed (pip install ninja)")
    directory = build_directory(SOURCE.read_bytes())
    cached = any(directory.glob(f"{EXTENSION_NAME}*.so")) or any(directory.glob(f"{EXTENSION_NAME}*.pyd"))
    start = time.perf_counter()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        module = cpp_extension.load(name=EXTENSION_NAME, sources=[str(SOURCE)], extra_cflags=list(CFLAGS),
                                    extra_ldflags=list(LDFLAGS), build_directory=str(directory), verbose=False)
    except Exception as exc:  # a compiler error, a missing header, an unwritable cache: keep PyTorch's paths
        first = str(exc).strip().splitlines()
        return KernelState(None, f"the build failed ({first[0] if first else type(exc).__name__}; in {directory})")
    return KernelState(module, "", time.perf_counter() - start, not cached, directory)
