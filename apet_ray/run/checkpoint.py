"""A run's checkpoint: the deltas, the optimizer state and the loop state -- nothing else.

A folder of three files: ``deltas.safetensors`` (``delta.save_deltas``: the spec, masks as
indices), ``optimizer.safetensors`` (AdamW moments and steps by parameter name) and
``state.json`` (the run record so far: its history says which step comes next). Nothing is
unpickled on load.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from apet_ray.delta import load_state, read_deltas, save_deltas, trainable_state_dict
from apet_ray.distributed import full_tensor, like, unwrap
from apet_ray.errors import UserError
from apet_ray.run.record import RunRecord


@dataclass
class Restored:
    """A checkpoint read into memory: the run goes on after ``record.steps_run``."""

    deltas: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]
    record: RunRecord
    source: str

    def load_deltas_into(self, model) -> None:
        load_state(model, self.deltas, source=self.source)

    def load_optimizer_into(self, optimizer: torch.optim.Optimizer, named: dict[str, torch.Tensor]) -> None:
        for n, p in named.items():
            optimizer.state[p] = {"step": self.optimizer[f"{n}.step"].clone(),
                                  "exp_avg": like(self.optimizer[f"{n}.exp_avg"], p),
                                  "exp_avg_sq": like(self.optimizer[f"{n}.exp_avg_sq"], p)}


def is_complete(folder: str | Path) -> bool:
    """A checkpoint folder a resume may trust: its ``state.json`` is there and both safetensors
    files open with a header that covers the file (checked without reading the tensors), so
    a copy cut off by a killed process is passed over."""
    from safetensors import safe_open

    folder = Path(folder)
    if not (folder / "state.json").is_file():
        return False
    for name in ("deltas.safetensors", "optimizer.safetensors"):
        try:
            with safe_open(str(folder / name), framework="pt"):
                pass
        except Exception:  # missing, truncated or not safetensors: several exception types
            return False
    return True


def read_checkpoint(folder: str | Path) -> Restored:
    folder = Path(folder)
    deltas, _ = read_deltas(folder / "deltas.safetensors")
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"checkpoint {folder}: state.json is missing or damaged ({exc})") from None
    if "record" not in state:
        raise UserError(f"checkpoint {folder} was written by an older apet-ray (no run record): start the run afresh")
    return Restored(deltas, load_file(str(folder / "optimizer.safetensors")), RunRecord.from_dict(state["record"]),
                    str(folder))


def save_checkpoint(model, optimizer, named: dict[str, torch.Tensor], record: RunRecord, rank: int) -> str | None:
    """Gather the trainable tensors (a collective under FSDP) and let rank 0 write them to a
    fresh temporary folder, returned (None on other ranks). Sets ``record.checkpoint_bytes``
    on rank 0, before the record itself is written beside the deltas.

    ``named`` maps names to the parameters the optimizer holds: FSDP2 swaps the root's
    registered parameters between sharded and unsharded, so names are looked up once."""
    inner = unwrap(model)
    deltas = {k: full_tensor(v) for k, v in trainable_state_dict(inner).items()}
    optim: dict[str, torch.Tensor] = {}
    for name, p in named.items():
        s = optimizer.state[p]
        optim[f"{name}.exp_avg"] = full_tensor(s["exp_avg"])
        optim[f"{name}.exp_avg_sq"] = full_tensor(s["exp_avg_sq"])
        optim[f"{name}.step"] = full_tensor(torch.as_tensor(s["step"], dtype=torch.float32)).reshape(())
    if rank != 0:
        return None
    folder = Path(tempfile.mkdtemp(prefix="apet-ckpt-"))
    save_deltas(inner, folder / "deltas.safetensors", metadata={"step": str(record.steps_run)}, state=deltas)
    record.checkpoint_bytes = (folder / "deltas.safetensors").stat().st_size
    save_file(optim, str(folder / "optimizer.safetensors"))
    (folder / "state.json").write_text(json.dumps({"record": record.to_dict()}))
    return str(folder)
