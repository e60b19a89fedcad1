"""Materialise a plan on a model, and the loralib-style surface around it.

    plan = attach(model, spec)          # freeze the backbone, insert masked deltas
    count_deltas(model)                 # realised count, from the masks
    trainable_state_dict(model)         # what a checkpoint holds
"""

from __future__ import annotations

import math
import zlib

import torch
from torch import nn

from apet_ray.delta.masked import MaskedTensor
from apet_ray.delta import masks, peft_arm
from apet_ray.delta.masks import MASKS
from apet_ray.delta.architectures import family_of
from apet_ray.delta.plan import Placement, Plan, backbone_of, make_plan
from apet_ray.delta.registry import PLACEMENT_KINDS, Slot
from apet_ray.delta.spec import DeltaSpec
from apet_ray.errors import UserError


def attach(model: nn.Module, spec: DeltaSpec) -> Plan:
    """Freeze the backbone of ``model`` and insert the deltas of ``spec`` (in place).

    Masks and initial values depend only on ``spec.seed`` and each tensor's position, so
    the same spec on the same architecture gives the same deltas, whatever the order.
    """
    if getattr(model, "apet_spec", None) is not None:
        raise UserError("this model already has deltas attached; build a fresh model for a new spec")
    if spec.is_peft:  # peft builds its own modules: no placements, counted from what it trains
        plan = Plan(spec=spec, family=family_of(backbone_of(model)[0]))
        peft_arm.install(model, spec)
        model.apet_spec, model.apet_plan = spec, plan
        return plan
    plan = make_plan(model, spec)
    backbone, _ = backbone_of(model)
    backbone.requires_grad_(False)
    for placement in plan.placements:
        _install(model, placement, spec)
    model.apet_spec = spec
    model.apet_plan = plan
    return plan


def _generator(spec: DeltaSpec, path: str, slot: str) -> torch.Generator:
    key = zlib.crc32(f"{path}/{slot}".encode())
    return torch.Generator().manual_seed(spec.seed * 1_000_003 + key)


def _masked(model: nn.Module, spec: DeltaSpec, placement: Placement, slot: Slot, like: torch.Tensor,
            indices: torch.Tensor | None = None) -> MaskedTensor | None:
    """The masked tensor of ``slot``: at ``indices`` when given (aligned pairs), else where
    the spec's mask function puts ``slot.k`` entries."""
    if slot.k == 0:  # a tensor that got no share of a small budget stays absent (zero)
        return None
    if like.is_meta and not _streamed(model):
        indices = torch.empty(slot.k, dtype=torch.long, device="meta")
        return MaskedTensor(slot.shape, indices, torch.empty(slot.shape, dtype=like.dtype, device="meta"))
    device = "cpu" if like.is_meta else like.device
    gen = _generator(spec, placement.path, slot.name)
    if indices is None:
        distribution = "full" if slot.k == slot.numel else spec.distribution
        indices = MASKS[distribution](slot.shape, slot.k, gen)
    init = _initial(model, slot, gen, like.dtype)
    return MaskedTensor(slot.shape, indices.to(device), init.to(device))


def _streamed(model: nn.Module) -> bool:
    """The backbone's weights are on meta only until each rank reads its slices
    (``models.build_model(device="stream")``): its deltas are made for real now, as on the CPU.
    ``model.apet_weights`` is that build's source of weights: ``keys`` (parameter id -> file
    tensor name) and ``rows(name, ids)``."""
    return getattr(model, "apet_weights", None) is not None


def _initial(model: nn.Module, slot: Slot, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """The dense W before masking (only its masked entries are kept)."""
    if slot.init == "zeros":  # deltas start at zero: attaching leaves outputs unchanged
        return torch.zeros(slot.shape, dtype=dtype)
    if slot.init == "kaiming":  # as peft's lora_A: uniform(+-1/sqrt(fan_in))
        w = torch.empty(slot.shape, dtype=torch.float32)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)
        return w.to(dtype)
    if slot.init == "vocab":  # Lester et al.: prompt tokens start as embeddings of real tokens
        table = backbone_of(model)[0].get_input_embeddings().weight
        ids = torch.randint(table.shape[0], (slot.shape[0],), generator=gen)
        if table.is_meta and _streamed(model):  # the rows it needs, from the weight files
            return model.apet_weights.rows(model.apet_weights.keys[id(table)], ids).to("cpu", dtype)
        return table.detach()[ids.to(table.device)].to("cpu", dtype)
    raise AssertionError(slot.init)


def _install(model: nn.Module, placement: Placement, spec: DeltaSpec) -> None:
    aligned = _aligned_indices(spec, placement) if placement.block else {}

    def masked(like: torch.Tensor) -> dict[str, MaskedTensor | None]:
        return {s.name: _masked(model, spec, placement, s, like, aligned.get(s.name)) for s in placement.slots}

    PLACEMENT_KINDS[placement.kind].install(model, placement, spec, masked)


def _aligned_indices(spec: DeltaSpec, placement: Placement) -> dict[str, torch.Tensor]:
    """An Adjacent pair's masks: one block of m rank (bottleneck) indices from a random j0,
    rows of the row side and the same columns of the column side (``plan._align_pairs``)."""
    m, size, pair = placement.block, placement.size, placement.pair
    j0 = int(torch.randint(size - m + 1, (1,), generator=_generator(spec, placement.path, "block")))
    slots = {s.name: s for s in placement.slots}
    row, col = slots[pair.row], slots[pair.col]
    out = {pair.col: masks.column_run(col.shape, col.k, j0)}
    if pair.row_bias is None:
        out[pair.row] = masks.row_run(row.shape, row.k, j0)
        return out
    bias, d = slots[pair.row_bias], row.shape[1]
    # the row side and its bias as one (size, d + 1) matrix: row j0 onwards, row-major
    flat = masks.row_run((size, d + 1), row.k + bias.k, j0)
    rows, cols = flat // (d + 1), flat % (d + 1)
    out[pair.row], out[pair.row_bias] = rows[cols < d] * d + cols[cols < d], rows[cols == d]
    return out


# ---- the public surface: count, mark, state --------------------------------------------

def count_trainable(model: nn.Module) -> int:
    """Every parameter that trains: deltas, in-place weights and a classifier head."""
    return sum(p.numel() for _, p in model.named_parameters() if p.requires_grad)


def count_deltas(model: nn.Module) -> int:
    """Trainable parameters of the deltas only (a wrapper's ``head`` excluded): the mask count."""
    head = getattr(model, "head", None)
    in_head = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    return sum(p.numel() for _, p in model.named_parameters() if p.requires_grad and id(p) not in in_head)


def count_backbone(model: nn.Module) -> int:
    """Parameters of the pre-trained backbone, tied weights counted once, deltas excluded."""
    if hasattr(model, "apet_backbone_params"):  # a peft arm: counted before peft added its layers
        return model.apet_backbone_params
    backbone, _ = backbone_of(model)
    delta_ids = {id(m.values) for m in model.modules() if isinstance(m, MaskedTensor)}
    return sum(p.numel() for _, p in backbone.named_parameters() if id(p) not in delta_ids)


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters plus the mask indices: all a checkpoint of the deltas needs."""
    state = {name: p for name, p in model.named_parameters() if p.requires_grad}
    for name, m in model.named_modules():
        if isinstance(m, MaskedTensor):
            state[f"{name}.indices"] = m.indices
    return state
