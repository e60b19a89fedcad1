"""Save and load only the deltas, as safetensors (nothing is unpickled on load).

The file holds ``trainable_state_dict(model)`` -- trainable values, mask indices, in-place
weights, a classifier head -- and, in the safetensors header, the spec that made them.
Loading checks the key set and every shape before copying anything, so a checkpoint
that does not fit the model is refused whole, never half-loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from apet_ray.atomic import replacing
from apet_ray.delta.attach import trainable_state_dict
from apet_ray.delta.masked import MaskedTensor
from apet_ray.delta.spec import DeltaSpec
from apet_ray.errors import UserError

FORMAT = "apet-ray-deltas/1"


def save_deltas(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None,
                state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the deltas atomically (temp file + rename). ``state`` overrides the tensors,
    e.g. with full tensors gathered from FSDP shards."""
    path = Path(path)
    state = trainable_state_dict(model) if state is None else state
    tensors = {k: _compact(k, v.detach().to("cpu").contiguous()) for k, v in state.items()}
    meta = {"format": FORMAT, "spec": model.apet_spec.to_json(), **(metadata or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:  # fsynced before the rename, with the umask's permissions
        save_file(tensors, str(tmp), metadata=meta)
    return path


def _compact(key: str, tensor: torch.Tensor) -> torch.Tensor:
    # flat mask positions fit int32 for any matrix below 2**31 entries: 8 bytes per
    # trained value on disk instead of 12 (loading widens them back to int64)
    if key.endswith(".indices") and tensor.dtype == torch.int64 and (tensor.numel() == 0 or int(tensor.max()) < 2**31):
        return tensor.to(torch.int32)
    return tensor


def read_deltas(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a delta file; a corrupt or foreign file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no delta checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for a damaged header/body
        raise UserError(f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is not an apet-ray delta checkpoint (format {meta.get('format')!r})")
    return tensors, meta


def spec_of(path: str | os.PathLike) -> DeltaSpec:
    return DeltaSpec.from_json(read_deltas(path)[1]["spec"])


def load_deltas(model: nn.Module, path: str | os.PathLike) -> dict[str, str]:
    """Copy saved deltas into a model that has the same spec attached; returns the metadata."""
    tensors, meta = read_deltas(path)
    load_state(model, tensors, source=str(path))
    return meta


def load_state(model: nn.Module, tensors: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    expected = trainable_state_dict(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise UserError(
            f"{source} does not fit this model: {len(missing)} missing key(s) {missing[:3]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:3]}"
        )
    for key, target in expected.items():
        if tuple(tensors[key].shape) != tuple(target.shape):
            raise UserError(f"{source} does not fit this model: {key} has shape {tuple(tensors[key].shape)}, "
                            f"the model expects {tuple(target.shape)}")
    masked = {name: m for name, m in model.named_modules() if isinstance(m, MaskedTensor)}
    for owner, m in masked.items():
        idx = tensors[f"{owner}.indices"]
        if idx.is_floating_point() or (idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= m.numel_dense
                                                        or not bool((idx[1:] > idx[:-1]).all()))):
            raise UserError(f"{source} is damaged: {owner}.indices are not increasing positions "
                            f"inside a {'x'.join(map(str, m.shape))} weight")
    with torch.no_grad():
        for key, target in expected.items():
            owner = key[: -len(".indices")]
            if key.endswith(".indices") and owner in masked:
                masked[owner].set_indices(tensors[key].to(target.device, torch.long))
            else:
                target.copy_(tensors[key].to(target.device, target.dtype))


