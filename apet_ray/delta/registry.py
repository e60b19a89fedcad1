"""The ops, in one place: what each puts where, how large it may grow, how it installs.

An *op* is what a spec names (``add``, ``add-weight``, ``concat``, ``plugin``). It places
one or more *placement kinds* -- one per kind of host: Add (the paper's Eq. 14) is a vector
added to a layer's output (a linear layer's bias delta, a norm's bias delta), or the model's
own weights in place (full fine-tuning); Add-weight (sparse fine-tuning) is a delta on a
linear layer's weight or on any other parameter; Concatenate is a soft prompt at the
embeddings or a low-rank pair beside a linear layer; Plugin is a bottleneck after one. ``plan`` and ``attach`` read everything kind-specific from here.

Adding an op is one ``register`` call and its layer class::

    from apet_ray.delta.registry import Op, PlacementKind, Slot, register
    register(Op("scale", defaults=("key", "value"), linear="scale",
                kinds=(PlacementKind("scale", slots=..., install=...),)))

docs/extending.md ("Adding an op") walks through one.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple

import torch
from torch import nn

from apet_ray.delta.architectures import Family, has_module, modules_for_role
from apet_ray.delta.layers import AddedOutput, AddedParam, CrossPositionBias, DeltaLinear, wrap
from apet_ray.delta.masked import MaskedTensor
from apet_ray.delta.ops import LowRank, Plugin, PromptTokens
from apet_ray.errors import UserError

# a DeltaSpec: spec.py imports this module (through methods.py), so not the other way round
Spec = Any

MAX_PROMPT_TOKENS = 1024  # where the model has no position limit (T5's relative positions)


@dataclass
class Slot:
    """One masked tensor to create: its dense shape, how to initialise W, and k."""

    name: str
    shape: tuple[int, ...]
    init: str  # zeros | kaiming | vocab | inplace
    k: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class Host(NamedTuple):
    """Where one placement goes: its kind, the module's path in the backbone, a parameter."""

    kind: str
    path: str
    param: str | None = None  # which parameter of the module (kind "param")
    rows: int | None = None  # a vector slot's length when shorter than the kind's (T5's LM-head bias)
    k: int | None = None  # a preset count (position "any" picks its tensors and counts itself)
    out_rows: tuple[int, ...] | None = None  # the output rows a vector slot covers when not all (kind "bias")


@dataclass(frozen=True)
class Pair:
    """Two factors that train only together: B·A stays 0 while either is empty, and so
    does the gradient of every entry of the other (``plan._no_dead_values``). Index j of the
    size (rank, bottleneck) is the row side's row j and the column side's column j."""

    row: str
    col: str
    row_bias: str | None = None  # a bias on the row side: the augmented row's last column
    free: str | None = None  # a slot beside the pair that trains on its own

    @property
    def sides(self) -> tuple[str, str]:
        return self.row, self.col


@dataclass
class Placement:
    """Where one op goes: a placement kind on one module, with its slots."""

    kind: str  # a name in PLACEMENT_KINDS
    path: str  # module path from the root model ("" for the root)
    slots: list[Slot]
    size: int | None = None  # rank / bottleneck / prompt length
    param: str | None = None  # for kind == "param": which parameter of the module
    block: int | None = None  # aligned Adjacent pair: rank/bottleneck indices both sides train
    out_rows: tuple[int, ...] | None = None  # a bias slot over these output rows only (Host.out_rows)

    @property
    def pair(self) -> Pair | None:
        return PLACEMENT_KINDS[self.kind].pair


# (model, placement, spec, masked): ``masked(like)`` makes the placement's masked tensors,
# slot name -> MaskedTensor (None where a slot got no share), with ``like``'s dtype and device
Masked = Callable[[torch.Tensor], dict[str, MaskedTensor | None]]
Install = Callable[[nn.Module, Placement, Spec, Masked], None]


@dataclass(frozen=True)
class PlacementKind:
    """What an op puts on one host: its slots (from shapes alone), how it installs itself,
    and for a sized kind (prompt length, rank, bottleneck) the largest size a host can use."""

    name: str
    slots: Callable[[nn.Module, int | None, str | None], list[Slot]]  # (host module, size, param)
    install: Install
    max_size: Callable[[nn.Module, nn.Module], int] | None = None  # (backbone, host module); None: unsized
    size_limit: str = ""  # that limit in words, for the refusal
    pair: Pair | None = None
    noun: str = ""  # in refusals; the name when empty

    @property
    def label(self) -> str:
        return self.noun or self.name


HostFn = Callable[[nn.Module, Family, str, Spec], list[Host]]  # (backbone, family, role, spec)


@dataclass(frozen=True)
class Op:
    """An op a spec may name: its placement kinds and where they go."""

    name: str
    defaults: tuple[str, ...]  # DeltaSpec.apet's positions when none are given
    kinds: tuple[PlacementKind, ...]  # registered with the op
    linear: str | None = None  # the kind it puts on each linear layer of a role
    at: Mapping[str, HostFn] = field(default_factory=dict)  # positions that are not linear roles
    match_positions: bool = True  # APET matching a method of this op takes the method's positions
    too_large: str = ""  # what to do instead, appended to the refusal of a budget above the capacity
    # roles whose layers an APET (not full) mask of this op leaves out: what it would put there
    # could never train, with the reason (``plan._hosts``)
    dead_roles: tuple[str, ...] = ()
    dead_because: str = ""


OPS: dict[str, Op] = {}
PLACEMENT_KINDS: dict[str, PlacementKind] = {}

# Positions that are not linear roles, for an op with no entry for them in ``Op.at``.
REFUSED = {
    "all": "position 'all' is full fine-tuning only; use --op add-weight at 'linear' for a masked delta on the weights",
    "embeddings": "a {op} cannot sit on the input embeddings (use concat for a prompt)",
    "biases": "position {role!r} takes the add op",
    "paper_biases": "position {role!r} takes the add op",
    "outputs": "position {role!r} (a vector on every layer output) takes the add op",
    "norm": "op {op} needs linear positions, not {role!r}",
}


def register(op: Op) -> Op:
    """Add ``op`` and its placement kinds; a kind another op registered must be that same kind."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*(-[a-z0-9_]+)*", op.name):
        raise ValueError(f"op name {op.name!r} must be lower-case letters, digits, _ or inner -")
    if op.name in OPS and OPS[op.name] != op:
        raise ValueError(f"op {op.name!r} is registered already, with other settings")
    for kind in op.kinds:
        if PLACEMENT_KINDS.get(kind.name, kind) != kind:
            raise ValueError(f"op {op.name}: placement kind {kind.name!r} is registered already, with other settings")
    if op.linear is not None and op.linear not in {k.name for k in op.kinds}:
        raise ValueError(f"op {op.name}: its linear kind {op.linear!r} is not one of its kinds")
    PLACEMENT_KINDS.update((kind.name, kind) for kind in op.kinds)
    OPS[op.name] = op
    return op


def unregister(name: str) -> None:
    """Remove an op, and its kinds no other op uses (tests that register a toy one clean up with this)."""
    op = OPS.pop(name, None)
    used = {kind.name for other in OPS.values() for kind in other.kinds}
    for kind in op.kinds if op else ():
        if kind.name not in used:
            PLACEMENT_KINDS.pop(kind.name, None)


# ---- Add: existing parameters ---------------------------------------------------------

def _in_place(backbone: nn.Module, fam: Family, role: str, spec: Spec) -> list[Host]:
    if spec.distribution != "full":
        raise UserError(REFUSED["all"])
    return [Host("inplace", "")]


def _embedding_rows(backbone: nn.Module, fam: Family, role: str, spec: Spec) -> list[Host]:
    head = backbone.get_output_embeddings() if fam.kind != "bert" else None
    if fam.kind == "t5" or (head is not None and head.weight is backbone.get_input_embeddings().weight):
        # one table serves the inputs and the (tied) LM head
        raise UserError(f"add at 'embeddings' is not supported on {fam.name}: its token table is shared "
                        "with the output layer (use concat for a prompt)")
    return [Host("param", fam.input_embeddings, "weight")]


def _biases(backbone: nn.Module, fam: Family, role: str, spec: Spec) -> list[Host]:
    """Bias deltas: on every linear layer ("biases"), or where the paper's BitFit puts them."""
    paper = role == "paper_biases"
    roles = fam.bitfit_roles if paper else fam.linear_roles
    linears = [p for r in roles for p in modules_for_role(backbone, fam, r)]
    hosts = [Host("bias", p) for p in linears]
    if paper:
        rows = fam.bitfit_linear_rows(backbone.config) if fam.bitfit_linear_rows else None
        hosts += [Host("bias", p, rows=rows) for p in fam.bitfit_linears if has_module(backbone, p)]
    for path in modules_for_role(backbone, fam, "norm") + list(fam.norms_outside_blocks):
        if getattr(backbone.get_submodule(path), "bias", None) is not None:  # T5's RMS norms have none
            hosts.append(Host("param", path, "bias"))
    if paper:
        hosts += [Host("param", p, "weight") for p in fam.bitfit_tables if has_module(backbone, p)]
        # last: wrapping an attention module moves its linear layers' paths under it
        hosts += [Host("table", p) for p in (fam.bitfit_new_tables(backbone) if fam.bitfit_new_tables else ())]
    return hosts


def _outputs(backbone: nn.Module, fam: Family, role: str, spec: Spec) -> list[Host]:
    """The paper's Add at every layer output where a vector can train: a superset of what
    BitFit trains (``paper_biases``) but its key biases, so that APET matched to BitFit
    masks BitFit's count inside a larger set.

    Each linear layer of the blocks (the key projections' are left out by the op's dead
    roles; of a fused q/k/v layer, under an APET mask, only its key rows), the LM head over
    BitFit's rows (T5: the tokenizer's), every norm (its own bias, or a vector added to its
    output where it has none: RMS norms), and the relative-position tables BitFit trains."""
    fused_keys = set(fam.fused_key_rows(backbone.config)) if fam.fused_key_rows and spec.distribution != "full" else ()
    fused = set(modules_for_role(backbone, fam, "qkv")) if fused_keys else set()
    hosts = []
    for path in modules_for_role(backbone, fam, "linear"):
        width = backbone.get_submodule(path).weight.shape[0]
        rows = tuple(r for r in range(width) if r not in fused_keys) if path in fused else None
        hosts.append(Host("bias", path, out_rows=rows))
    head = backbone.get_output_embeddings()
    if isinstance(head, nn.Linear):
        path = next(name for name, m in backbone.named_modules() if m is head)
        rows = fam.bitfit_linear_rows(backbone.config) if fam.bitfit_linear_rows and path in fam.bitfit_linears else None
        hosts.append(Host("bias", path, rows=rows))
    for path in modules_for_role(backbone, fam, "norm") + list(fam.norms_outside_blocks):
        has_bias = getattr(backbone.get_submodule(path), "bias", None) is not None
        hosts.append(Host("param", path, "bias") if has_bias else Host("output", path))
    hosts += [Host("param", p, "weight") for p in fam.bitfit_tables if has_module(backbone, p)]
    # last: wrapping an attention module moves its linear layers' paths under it
    hosts += [Host("table", p) for p in (fam.bitfit_new_tables(backbone) if fam.bitfit_new_tables else ())]
    return hosts


def _norm_weights(backbone: nn.Module, fam: Family, role: str, spec: Spec) -> list[Host]:
    return [Host("param", p, "weight") for p in modules_for_role(backbone, fam, role)]


def _install_weight(model: nn.Module, p: Placement, spec: Spec, masked: Masked) -> None:
    layer = wrap(model, p.path, DeltaLinear)
    layer.weight_delta = masked(layer.base.weight)["weight_delta"]


def _install_bias(model: nn.Module, p: Placement, spec: Spec, masked: Masked) -> None:
    layer = wrap(model, p.path, DeltaLinear)
    layer.bias_delta = masked(layer.base.weight)["bias_delta"]
    if p.out_rows is not None:
        layer.bias_rows = torch.tensor(p.out_rows, dtype=torch.long, device=layer.base.weight.device)


def _install_output(model: nn.Module, p: Placement, spec: Spec, masked: Masked) -> None:
    layer = wrap(model, p.path, AddedOutput)
    layer.bias_delta = masked(layer.base.weight)["bias_delta"]


def _install_param(model: nn.Module, p: Placement, spec: Spec, masked: Masked) -> None:
    wrapper = wrap(model, p.path, AddedParam)
    delta = masked(getattr(wrapper.base, p.param))[p.param]
    if delta is not None:
        wrapper.deltas[p.param] = delta


def _install_in_place(model: nn.Module, p: Placement, spec: Spec, masked: Masked) -> None:
    model.get_submodule(p.path).requires_grad_(True)  # full masks on the model's own weights: train them


def _table_slots(m: nn.Module, size: int | None, param: str | None) -> list[Slot]:
    return [Slot("relative_attention_bias", (m.relative_attention_num_buckets, m.n_heads), "zeros")]


def _install_table(model: nn.Module, p: Placement, spec: Spec, masked: Masked) -> None:
    layer = wrap(model, p.path, CrossPositionBias)
    layer.relative_attention_bias = masked(layer.base.q.weight)["relative_attention_bias"]


# One object per kind, shared by both Add ops: a kind two ops register must be the same kind.
WEIGHT = PlacementKind("weight", lambda m, size, param: [Slot("weight_delta", tuple(m.weight.shape), "zeros")],
                       _install_weight)
BIAS = PlacementKind("bias", lambda m, size, param: [Slot("bias_delta", (m.weight.shape[0],), "zeros")],
                     _install_bias)
PARAM = PlacementKind("param", lambda m, size, param: [Slot(param, tuple(getattr(m, param).shape), "zeros")],
                      _install_param)
# a vector on the output of a module with no bias (an RMS norm: its weight's width)
OUTPUT = PlacementKind("output", lambda m, size, param: [Slot("bias_delta", (m.weight.shape[0],), "zeros")],
                       _install_output)
# a relative-position table a T5 cross-attention did not have (BitFit as the release counts it)
TABLE = PlacementKind("table", _table_slots, _install_table)
# named_parameters() yields a tied parameter once: it trains (and counts) once
INPLACE = PlacementKind("inplace", lambda m, size, param: [Slot(n, tuple(w.shape), "inplace")
                                                           for n, w in m.named_parameters()], _install_in_place)


def _weights_only(backbone: nn.Module, fam: Family, role: str, spec: Spec) -> list[Host]:
    raise UserError(f"the paper's add puts vectors at layer outputs; position {role!r} is a delta on the "
                    f"{role} weights: use --op add-weight")


# The paper's Add (Eq. 14, "similar to BitFit"): f(h) + W~ (.) m, an input-independent vector
# added to a layer's output. On a linear layer that vector is the layer's (added) bias, so at
# BitFit's positions it is BitFit, and at any linear role it is one out_features vector per
# layer; at "biases" also the norms' biases; at "outputs" (its default) every layer output
# where a vector can train, which holds BitFit's count on every family. Its capacity is
# those vectors' total size (every budget up to it is exact); above it the refusal points
# to add-weight.
register(Op("add", defaults=("outputs",), linear="bias", match_positions=False,
            kinds=(BIAS, PARAM, TABLE, OUTPUT, INPLACE),
            at={"all": _in_place, "biases": _biases, "paper_biases": _biases, "outputs": _outputs,
                "embeddings": _weights_only, "norm": _weights_only},
            too_large="the paper's add holds one vector per layer output; for a sparse delta on the "
                      "weights use --op add-weight",
            # q.(k + b) = q.k + q.b shifts every key's score for one query alike, and softmax
            # ignores a shift: a vector on a key projection's output has zero gradient. BitFit
            # (a full mask) still trains and counts those biases, as the paper does.
            dead_roles=("key", "cross_key"),
            dead_because="a vector on the key projection's output shifts every attention score of a "
                         "query alike, which softmax ignores: it can never train"))

# Sparse fine-tuning: f(x; W + W~), a masked delta on a layer's own weight (input-dependent).
# This was "add" before the paper's form took the name; its numerics, masks and checkpoint keys
# are that op's.
register(Op("add-weight", defaults=("linear",), linear="weight", match_positions=False,
            kinds=(WEIGHT, BIAS, PARAM, TABLE, INPLACE),
            at={"all": _in_place, "embeddings": _embedding_rows, "biases": _biases, "paper_biases": _biases,
                "norm": _norm_weights}))


# ---- Concatenate: a prompt, or a low-rank pair ----------------------------------------

def _prompt_slots(backbone: nn.Module, size: int | None, param: str | None) -> list[Slot]:
    return [Slot("tokens", (size, backbone.get_input_embeddings().weight.shape[1]), "vocab")]


def _prompt_tokens(backbone: nn.Module, host: nn.Module) -> int:
    limit = getattr(backbone.config, "max_position_embeddings", None)
    return limit // 2 if limit else MAX_PROMPT_TOKENS  # leave half the positions to the input


def _install_prompt(model: nn.Module, p: Placement, spec: Spec, masked: Masked) -> None:
    if not hasattr(model, "prompt"):
        raise UserError("prompt tuning needs an apet_ray model (apet_ray.models.load_model), not a bare transformers model")
    model.prompt = PromptTokens(masked(model.get_submodule(p.path).get_input_embeddings().weight)["tokens"])


def _lowrank_slots(m: nn.Module, size: int | None, param: str | None) -> list[Slot]:
    out_f, in_f = m.weight.shape
    return [Slot("A", (size, in_f), "kaiming"), Slot("B", (out_f, size), "zeros")]


# LoRA's rank (SPEC §2): APET's low-rank pairs train at LoRA's scale alpha / 8 (16 / 8 = 2.0).
LOWRANK_REFERENCE_RANK = 8


def lowrank_scale(spec: Spec, size: int) -> float:
    """alpha / r. A PET method's r is its own rank. APET's is LoRA's whatever rank its budget
    and density pick, as the release scales its APET modules: at alpha / size, APET matched to
    LoRA (rank 16 at density 0.5) trained at 1.0 against LoRA's 2.0, and matched to the adapter
    (rank 49) at 0.33 -- a smaller effective learning rate, not a different structure."""
    return spec.alpha / (LOWRANK_REFERENCE_RANK if spec.method == "apet" else size)


def _install_lowrank(model: nn.Module, p: Placement, spec: Spec, masked: Masked) -> None:
    layer = wrap(model, p.path, DeltaLinear)
    made = masked(layer.base.weight)
    layer.add_extra("lowrank", LowRank(made["A"], made["B"], scale=lowrank_scale(spec, p.size)))


register(Op("concat", defaults=("query", "value"), linear="lowrank", kinds=(
    PlacementKind("prompt", _prompt_slots, _install_prompt, max_size=_prompt_tokens,
                  size_limit="half the model's positions"),
    # a rank above min(in, out) adds nothing
    PlacementKind("lowrank", _lowrank_slots, _install_lowrank, max_size=lambda backbone, m: min(m.weight.shape),
                  size_limit="a rank of min(in, out) of the layer", pair=Pair("A", "B"), noun="low-rank pair"),
), at={"embeddings": lambda backbone, fam, role, spec: [Host("prompt", "")]}))


# ---- Plugin: a bottleneck after a linear layer ------------------------------------------

def _plugin_slots(m: nn.Module, size: int | None, param: str | None) -> list[Slot]:
    d = m.weight.shape[0]
    return [Slot("down", (size, d), "kaiming"), Slot("down_bias", (size,), "zeros"),
            Slot("up", (d, size), "zeros"), Slot("up_bias", (d,), "zeros")]


RELEASE_PLUGIN_STD = 0.01  # the release's adapter projections start as N(0, 0.01)


def _release_init(made: dict[str, MaskedTensor | None], spec: Spec, path: str) -> None:
    """Both projections drawn from N(0, 0.01) (spec.plugin_init "release"), seeded per tensor
    as attach seeds every other init: the same spec gives the same values. Unlike the
    default (a zero up projection) the adapter then moves the outputs slightly at once."""
    for name in ("down", "up"):
        m = made[name]
        if m is None or m.values.is_meta:
            continue
        gen = torch.Generator().manual_seed(spec.seed * 1_000_003 + zlib.crc32(f"{path}/{name}/normal".encode()))
        dense = torch.randn(m.shape, generator=gen) * RELEASE_PLUGIN_STD
        with torch.no_grad():
            m.values.copy_(dense.view(-1)[m.indices.cpu()].to(m.values))


def _install_plugin(model: nn.Module, p: Placement, spec: Spec, masked: Masked) -> None:
    layer = wrap(model, p.path, DeltaLinear)
    made = masked(layer.base.weight)
    if spec.plugin_init == "release":
        _release_init(made, spec, p.path)
    layer.add_extra("plugin", Plugin(made["down"], made["down_bias"], made["up"], made["up_bias"], p.size,
                                     spec.activation))


register(Op("plugin", defaults=("attn_out", "ffn_out"), linear="plugin", kinds=(
    PlacementKind("plugin", _plugin_slots, _install_plugin, max_size=lambda backbone, m: m.weight.shape[0],
                  size_limit="a bottleneck as wide as the layer",
                  # the up bias trains on its own; the down bias is part of the row side
                  pair=Pair("down", "up", row_bias="down_bias", free="up_bias")),
)))
