"""Weights that stream into a sharded model: every FSDP rank reads its own slices.

A streamed build (``build_model(..., device="stream")``) makes the backbone's parameters on
the meta device -- nothing allocated, nothing initialised, no random numbers drawn -- while
its buffers (position ids, rotary frequencies) and everything outside it (a classifier head,
the deltas) are built for real, as in any build. ``WeightSource`` then knows, for each meta
parameter, which tensor of which safetensors file holds it, and ``read`` returns the rows a
rank keeps (``distributed.wrap``): no rank ever maps or reads the whole file. Reads are
plain reads into the rank's own tensor, not a memory map, whose touched file pages would
count in the rank's resident memory until unmapped (measured on fp32 t5-v1_1-large: a
rank peaked at 0.92 x one process with ``safe_open`` slices, at 0.51 x once loaded with
plain reads; docs/benchmarks.md section 7).

A folder streams when its safetensors files cover every backbone parameter under the
model's own names (optionally with or without the base-model prefix, as transformers saves
them); anything else (``*.bin`` weights, renamed keys, GPT-2's transposed ``Conv1D``) loads
the usual way, rank 0 reading and scattering.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


def weight_files(folder: Path) -> dict[str, Path] | None:
    """Each tensor name of the folder's safetensors checkpoint, with the file holding it;
    None when the folder has no (or not only) safetensors weights."""
    index, single = folder / "model.safetensors.index.json", folder / "model.safetensors"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return {key: folder / name for key, name in weight_map.items()}
    if single.is_file():
        return {key: single for key in _header(single)[1] if key != "__metadata__"}
    return None


def _header(path: Path) -> tuple[int, dict]:
    """A safetensors file's header size and its JSON (already checked whole by ``models.folder``)."""
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        return size, json.loads(fh.read(size))


@contextlib.contextmanager
def parameters_on_meta():
    """Every parameter registered inside is replaced by a meta tensor of its shape and dtype,
    and torch's and transformers' initialisers do nothing: a model's weights cost neither
    memory (an uninitialised allocation is never touched) nor random numbers, while its
    buffers are computed as usual."""
    from transformers.initialization import no_init_weights

    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta
    try:
        with no_init_weights():
            yield
    finally:
        nn.Module.register_parameter = register


# safetensors dtype names -> torch dtypes (the format's spec: dtype, shape, data_offsets)
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


@dataclass(frozen=True)
class _Entry:
    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # byte offset of the tensor's data in the file


def _entries(paths: set[Path]) -> dict[str, _Entry]:
    """Every tensor's place in the files, from their headers (already checked whole by
    ``models.folder``): the data are read with plain reads, never memory-mapped, so a rank's
    resident memory holds the rows it keeps and not the file pages it went through."""
    out = {}
    for path in paths:
        size, header = _header(path)
        for key, info in header.items():
            if key != "__metadata__" and info["dtype"] in _DTYPES:
                out[key] = _Entry(path, _DTYPES[info["dtype"]], tuple(info["shape"]), 8 + size + info["data_offsets"][0])
    return out


@dataclass
class WeightSource:
    """Where each streamed parameter of a model lives: parameter (by identity) -> file key."""

    entries: dict[str, _Entry]
    keys: dict[int, str]  # id(parameter) -> tensor name in the files

    @classmethod
    def of(cls, backbone: nn.Module, folder: Path) -> WeightSource | None:
        """The source of every meta parameter of ``backbone``, or None if some parameter is
        not in the folder's safetensors files under its name and shape (then the model loads
        the usual way)."""
        files = weight_files(folder)
        if files is None:
            return None
        prefix = getattr(backbone, "base_model_prefix", "")
        keys: dict[int, str] = {}
        for name, param in backbone.named_parameters(remove_duplicate=False):
            if id(param) in keys:  # tied: the first name the file holds it under
                continue
            candidates = [name, f"{prefix}.{name}"] + ([name[len(prefix) + 1:]] if name.startswith(f"{prefix}.") else [])
            key = next((c for c in candidates if c in files), None)
            if key is None:
                return None
            keys[id(param)] = key
        entries = _entries({files[k] for k in keys.values()})
        wanted = {id(p): tuple(p.shape) for p in backbone.parameters()}
        if any(key not in entries or entries[key].shape != wanted[pid] for pid, key in keys.items()):
            return None  # stored in another layout (transposed, padded): not sliceable as the model holds it
        return cls(entries, keys)

    def names(self, model: nn.Module) -> dict[str, str]:
        """State-dict name -> file key for ``model`` as it is now (deltas attached, before
        sharding: sharding swaps the parameter objects)."""
        return {name: self.keys[id(p)] for name, p in model.named_parameters(remove_duplicate=False)
                if id(p) in self.keys}

    def read(self, key: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows ``start:stop`` of tensor ``key`` (the whole tensor by default), read from its file."""
        entry = self.entries[key]
        rows = entry.shape[0] if entry.shape else 1
        stop = rows if stop is None else min(stop, rows)
        row_bytes = math.prod(entry.shape[1:]) * entry.dtype.itemsize
        out = torch.empty((stop - start, *entry.shape[1:]) if entry.shape else (), dtype=entry.dtype)
        if out.numel():
            with open(entry.path, "rb", buffering=0) as fh:
                fh.seek(entry.start + start * row_bytes)
                fh.readinto(memoryview(out.view(-1).view(torch.uint8).numpy()))
        return out

    def rows(self, key: str, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of tensor ``key`` (a prompt initialised from the embedding table)."""
        return torch.cat([self.read(key, int(i), int(i) + 1) for i in ids.tolist()]) if ids.numel() else \
            self.read(key, 0, 0)
