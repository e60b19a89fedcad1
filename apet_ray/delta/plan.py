"""Planning: turn a spec into placements with exact per-tensor counts, from shapes alone.

A plan never touches weight values, so it runs on a meta-device model built from a
config (seconds, even for 11B parameters). ``attach`` then materialises it.

Budget rules
- The budget (or the matched method's count) is split over every tensor of every
  placement in proportion to the tensor's size, by largest remainder: the sum is exact.
- Add uses existing parameters, so its capacity is fixed; a larger budget is refused.
- Concatenate and Plugin create new weights whose size (prompt length, rank, bottleneck)
  is free: APET picks the smallest size whose new weights hold the budget at about the
  spec's ``density`` (at small budgets the smallest size, so a lower density).
- No counted value may be one that can never train: at tiny budgets the split can leave
  one factor of a low-rank pair (or of a plugin) empty, which freezes the other at zero
  gradient, so entries move until every pair that has entries has them on both sides.
- Adjacent pairs are aligned: a rank (bottleneck) index j carries a value only through
  A's row j and B's column j together, so an Adjacent low-rank pair or plugin trains one
  contiguous block of indices on both sides -- rows j0..j0+m of A (row-major), columns
  j0..j0+m of B (column-major) -- and its count is split so both sides touch exactly
  those m indices. A row-major run on B would leave a quarter of a budget in columns whose
  A row is empty, at zero gradient forever.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from apet_ray.delta.architectures import Family, family_of, has_module, modules_for_role
from apet_ray.delta.spec import DeltaSpec, check_budget
from apet_ray.errors import UserError

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


@dataclass
class Placement:
    """Where one op goes. ``kind``: weight | bias | param | lowrank | plugin | prompt | inplace."""

    kind: str
    path: str  # module path from the root model ("" for the root)
    slots: list[Slot]
    size: int | None = None  # rank / bottleneck / prompt length
    param: str | None = None  # for kind == "param": which parameter of the module
    block: int | None = None  # aligned Adjacent pair: rank/bottleneck indices both sides train


@dataclass
class Plan:
    spec: DeltaSpec
    family: Family
    placements: list[Placement] = field(default_factory=list)
    requested: int | None = None  # the budget asked for (explicitly or by match)

    @property
    def count(self) -> int:
        return sum(s.k for p in self.placements for s in p.slots)

    @property
    def capacity(self) -> int:
        return sum(s.numel for p in self.placements for s in p.slots)

    @property
    def size(self) -> int | None:
        sizes = {p.size for p in self.placements if p.size is not None}
        return sizes.pop() if len(sizes) == 1 else None


def backbone_of(model: nn.Module) -> tuple[nn.Module, str]:
    """The Hugging Face model inside an apet_ray wrapper (attribute ``backbone``), or the model."""
    inner = getattr(model, "backbone", None)
    if isinstance(inner, nn.Module):
        return inner, "backbone."
    return model, ""


def make_plan(model: nn.Module, spec: DeltaSpec) -> Plan:
    backbone, prefix = backbone_of(model)
    fam = family_of(backbone)
    requested = spec.budget
    if spec.match is not None:
        requested = make_plan(model, DeltaSpec.pet(spec.match)).count
    plan = Plan(spec=spec, family=fam, requested=requested)
    hosts = _hosts(backbone, fam, spec)

    size = None
    if spec.op in ("concat", "plugin"):
        size = spec.size if spec.distribution == "full" or spec.size is not None else _pick_size(backbone, hosts, spec, requested)
        # the weights would be allocated densely before the mask is drawn: a size no layer
        # can use is a mistake, refused here rather than as an out-of-memory
        most = _max_size(backbone, hosts) if spec.size is not None and hosts else None
        if most is not None and spec.size > most:
            raise UserError(f"size {spec.size:,} is larger than {spec.op} at {', '.join(spec.positions)} can use on "
                            f"this model (at most {most:,}: {_SIZE_LIMIT[hosts[0][0]]})")
    for kind, path, param in hosts:
        module = backbone.get_submodule(path) if path else backbone
        plan.placements.append(_placement(kind, prefix + path if path else prefix.rstrip("."), module, param, size, backbone))

    if spec.distribution == "full":
        for p in plan.placements:
            for s in p.slots:
                s.k = s.numel
    else:
        _allocate(plan, requested)
        if spec.distribution == "adjacent":
            _align_pairs(plan)
    return plan


# ---- hosts: which modules an op touches -------------------------------------------

def _hosts(backbone: nn.Module, fam: Family, spec: DeltaSpec) -> list[tuple[str, str, str | None]]:
    """(kind, module path in the backbone, parameter name) for every position of the spec."""
    hosts: list[tuple[str, str, str | None]] = []
    for role in spec.positions:
        if role == "all":
            if spec.op != "add" or spec.distribution != "full":
                raise UserError("position 'all' is full fine-tuning only; use 'linear' for a masked Add over the weights")
            hosts.append(("inplace", "", None))
        elif role == "embeddings":
            if spec.op == "concat":
                hosts.append(("prompt", "", None))
            elif spec.op == "add":
                head = backbone.get_output_embeddings() if fam.kind != "bert" else None
                if fam.kind == "t5" or (head is not None and head.weight is backbone.get_input_embeddings().weight):
                    # one table serves the inputs and the (tied) LM head
                    raise UserError(f"add at 'embeddings' is not supported on {fam.name}: its token table is shared "
                                    "with the output layer (use concat for a prompt)")
                hosts.append(("param", fam.input_embeddings, "weight"))
            else:
                raise UserError("a plugin cannot sit on the input embeddings (use concat for a prompt)")
        elif role in ("biases", "paper_biases"):
            if spec.op != "add":
                raise UserError(f"position {role!r} takes the add op")
            hosts += _bias_hosts(backbone, fam, paper=role == "paper_biases")
        else:
            paths = modules_for_role(backbone, fam, role)
            is_linear = role != "norm"
            if spec.op == "add":
                hosts += [("weight" if is_linear else "param", p, None if is_linear else "weight") for p in paths]
            elif not is_linear:
                raise UserError(f"op {spec.op} needs linear positions, not {role!r}")
            else:
                hosts += [("lowrank" if spec.op == "concat" else "plugin", p, None) for p in paths]
    if not hosts:
        raise UserError(f"positions {', '.join(spec.positions)} match nothing in this model")
    # a module named twice (fused attention: "query" and "value" are one layer) hosts one delta
    hosts = list(dict.fromkeys(hosts))
    if len({kind for kind, _, _ in hosts} & {"prompt", "lowrank"}) == 2:
        raise UserError("a prompt and low-rank pairs have different sizes: give them separate specs")
    return hosts


def _bias_hosts(backbone: nn.Module, fam: Family, paper: bool) -> list[tuple[str, str, str | None]]:
    """Bias deltas: on every linear layer ("biases"), or where the paper's BitFit puts them."""
    roles = fam.bitfit_roles if paper else fam.linear_roles
    linears = [p for r in roles for p in modules_for_role(backbone, fam, r)]
    if paper:
        linears += [p for p in fam.bitfit_linears if has_module(backbone, p)]
    hosts: list[tuple[str, str, str | None]] = [("bias", p, None) for p in linears]
    for path in modules_for_role(backbone, fam, "norm") + list(fam.norms_outside_blocks):
        if getattr(backbone.get_submodule(path), "bias", None) is not None:  # T5's RMS norms have none
            hosts.append(("param", path, "bias"))
    if paper:
        hosts += [("param", p, "weight") for p in fam.bitfit_tables if has_module(backbone, p)]
    return hosts


def _placement(kind: str, path: str, module: nn.Module, param: str | None, size: int | None, backbone: nn.Module) -> Placement:
    if kind == "inplace":
        # named_parameters() yields a tied parameter once: it trains (and counts) once
        slots = [Slot(name, tuple(p.shape), "inplace") for name, p in module.named_parameters()]
        return Placement(kind, path, slots)
    if kind == "prompt":
        d = backbone.get_input_embeddings().weight.shape[1]
        return Placement(kind, path, [Slot("tokens", (size, d), "vocab")], size=size)
    if kind == "param":
        return Placement(kind, path, [Slot(param, tuple(getattr(module, param).shape), "zeros")], param=param)
    out_f, in_f = module.weight.shape
    if kind == "weight":
        return Placement(kind, path, [Slot("weight_delta", (out_f, in_f), "zeros")])
    if kind == "bias":
        return Placement(kind, path, [Slot("bias_delta", (out_f,), "zeros")])
    if kind == "lowrank":
        return Placement(kind, path, [Slot("A", (size, in_f), "kaiming"), Slot("B", (out_f, size), "zeros")], size=size)
    if kind == "plugin":
        d = out_f
        slots = [Slot("down", (size, d), "kaiming"), Slot("down_bias", (size,), "zeros"),
                 Slot("up", (d, size), "zeros"), Slot("up_bias", (d,), "zeros")]
        return Placement(kind, path, slots, size=size)
    raise AssertionError(kind)


# ---- sizes and budgets ---------------------------------------------------------------

def _pick_size(backbone: nn.Module, hosts: list[tuple[str, str, str | None]], spec: DeltaSpec, k: int) -> int:
    """Smallest size whose new weights hold ceil(k / density) entries."""
    def capacity(size: int) -> int:
        return sum(
            s.numel for kind, path, param in hosts
            for s in _placement(kind, path, backbone.get_submodule(path) if path else backbone, param, size, backbone).slots
        )

    limit = _max_size(backbone, hosts)
    target = math.ceil(k / spec.density)
    if capacity(limit) < k:
        raise UserError(
            f"budget {k:,} is larger than {spec.op} at {', '.join(spec.positions)} can hold on this model "
            f"({capacity(limit):,} at the largest size {limit})"
        )
    lo, hi = 1, limit  # capacity grows with size: bisect for the smallest that fits
    while lo < hi:
        mid = (lo + hi) // 2
        if capacity(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


_SIZE_LIMIT = {"prompt": "half the model's positions", "lowrank": "a rank of min(in, out) of the layer",
               "plugin": "a bottleneck as wide as the layer"}


def _max_size(backbone: nn.Module, hosts: list[tuple[str, str, str | None]]) -> int:
    kind = hosts[0][0]
    if kind == "prompt":
        limit = getattr(backbone.config, "max_position_embeddings", None)
        return limit // 2 if limit else MAX_PROMPT_TOKENS  # leave half the positions to the input
    shapes = [backbone.get_submodule(path).weight.shape for _, path, _ in hosts]
    if kind == "lowrank":
        return min(min(s) for s in shapes)  # a rank above min(in, out) adds nothing
    return min(s[0] for s in shapes)  # plugin: bottleneck no wider than the layer


def _allocate(plan: Plan, k: int) -> None:
    k = check_budget(k)
    slots = [s for p in plan.placements for s in p.slots]
    capacity = sum(s.numel for s in slots)
    if k > capacity:
        raise UserError(
            f"budget {k:,} is larger than the capacity of {plan.spec.op} at "
            f"{', '.join(plan.spec.positions)} on this model ({capacity:,})"
        )
    # largest remainder: floor shares, then one more to the largest fractional parts
    shares = [k * s.numel // capacity for s in slots]
    rests = sorted(range(len(slots)), key=lambda i: (-(k * slots[i].numel % capacity), i))
    for i in rests[: k - sum(shares)]:
        shares[i] += 1
    for s, share in zip(slots, shares):
        s.k = share
    _no_dead_values(plan)


# The two factors of a pair: values on one side train only if the other side has some.
# B·A stays 0 while either factor is empty (B starts at zero; an empty A is zero), and
# so does the gradient of every entry of the other; a plugin's down projection needs
# its up projection and vice versa (an up bias trains on its own).
PAIRED = {"lowrank": ("A", "B"), "plugin": ("down", "up")}


def _sides(p: Placement) -> list[Slot]:
    return [s for s in p.slots if s.name in PAIRED[p.kind]]


def _no_dead_values(plan: Plan) -> None:
    """Move entries so that no counted value sits where it can never train.

    Only small budgets need it (rank 1, a handful of entries per layer). The count stays
    exact: an entry moves within its placement, or to another placement that trains.
    """
    pairs = [p for p in plan.placements if p.kind in PAIRED]
    orphans = 0
    for p in pairs:
        sides = _sides(p)
        up_bias = next((s for s in p.slots if s.name == "up_bias"), None)  # trains without the pair
        paired = sum(s.k for s in p.slots) - (up_bias.k if up_bias else 0)
        if paired == 0 or all(s.k for s in sides):
            continue
        if paired == 1:  # one entry cannot feed both sides: a plugin's up bias takes it, else it leaves
            next(s for s in p.slots if s.k and s is not up_bias).k = 0
            if up_bias is not None and up_bias.k < up_bias.numel:
                up_bias.k += 1
            else:
                orphans += 1
            continue
        for side in sides:  # an empty side takes one entry from a slot that can spare it
            if side.k == 0:
                spare = [s for s in p.slots if s is not up_bias and s.k >= (2 if s.name in PAIRED[p.kind] else 1)]
                max(spare, key=lambda s: s.k).k -= 1
                side.k += 1
    if not orphans:
        return
    takers = sorted((p for p in pairs if all(s.k for s in _sides(p))), key=lambda p: -sum(s.k for s in p.slots))
    if not takers and orphans >= 2:  # the orphans form one pair themselves
        for s in _sides(pairs[0]):
            s.k += 1
        orphans -= 2
        takers = [pairs[0]]
    room = [s for p in takers for s in p.slots if s.k < s.numel]
    if sum(s.numel - s.k for s in room) < orphans:
        raise UserError(f"budget {plan.count + orphans:,} is too small for {plan.spec.op}: a trained "
                        f"{'low-rank pair' if plan.spec.op == 'concat' else 'plugin'} needs entries on both sides")
    for s in room:
        moved = min(orphans, s.numel - s.k)
        s.k += moved
        orphans -= moved


# ---- Adjacent pairs: one aligned block of rank / bottleneck indices --------------------

def pair_units(p: Placement) -> tuple[int, int]:
    """Entries per rank (bottleneck) index on the row side and on the column side.

    Low-rank: A's row (in) and B's column (out). Plugin: the down projection's row plus
    its bias entry (d + 1; the bias is the augmented row's last column) and the up
    projection's column (d); the up bias is outside the pair and trains on its own."""
    if p.kind == "lowrank":
        a, b = p.slots
        return a.shape[1], b.shape[0]
    down = next(s for s in p.slots if s.name == "down")
    return down.shape[1] + 1, down.shape[1]


def _aligned_split(k: int, row: int, col: int) -> tuple[int, int, int] | None:
    """(row-side entries, column-side entries, indices m) covering exactly m indices on
    both sides, or None when k cannot be split so (it is one more than m-1 full indices)."""
    if k == 0:
        return 0, 0, 0
    m = -(-k // (row + col))
    lo, hi = max((m - 1) * row + 1, k - m * col), min(m * row, k - (m - 1) * col - 1)
    if lo > hi:
        return None
    k_row = min(max(round(k * row / (row + col)), lo), hi)
    return k_row, k - k_row, m


def _set_aligned(p: Placement, k_pair: int) -> bool:
    split = _aligned_split(k_pair, *pair_units(p))
    if split is None:
        return False
    k_row, k_col, p.block = split
    if p.kind == "lowrank":
        p.slots[0].k, p.slots[1].k = k_row, k_col
        return True
    slots = {s.name: s for s in p.slots}
    d = slots["down"].shape[1]
    slots["down_bias"].k = k_row // (d + 1)  # the augmented rows' last column
    slots["down"].k = k_row - slots["down_bias"].k
    slots["up"].k = k_col
    return True


def _align_pairs(plan: Plan) -> None:
    """Re-split each Adjacent pair so both sides cover the same indices; the count stays
    exact. A pair whose share is one entry past whole indices hands that entry on (to its
    up bias, else to the next pair)."""
    pairs = [p for p in plan.placements if p.kind in PAIRED]
    carry = 0
    for p in pairs:
        free = next((s for s in p.slots if s.name == "up_bias"), None)
        k_pair = sum(s.k for s in p.slots) - (free.k if free else 0) + carry
        carry = 0
        if not _set_aligned(p, k_pair):
            if free is not None and free.k < free.numel:
                free.k += 1
            else:
                carry = 1
            _set_aligned(p, k_pair - 1)
    if carry and not _place_one_more(pairs):
        raise UserError(f"budget {plan.count + 1:,} cannot be laid out as aligned Adjacent blocks for "
                        f"{plan.spec.op} on this model: ask for one more or one fewer")


def _paired_count(p: Placement) -> int:
    return sum(s.k for s in p.slots if s.name != "up_bias")


def _room(p: Placement, k: int) -> bool:
    return k <= sum(s.numel for s in p.slots if s.name != "up_bias")


def _place_one_more(pairs: list[Placement]) -> bool:
    """One entry that no pair could take as it was: +1 on a pair, else +2 on one and -1 on another."""
    for p in pairs:
        if _room(p, _paired_count(p) + 1) and _set_aligned(p, _paired_count(p) + 1):
            return True
    for p in pairs:
        k_p = _paired_count(p)
        if not (_room(p, k_p + 2) and _set_aligned(p, k_p + 2)):
            continue
        for q in pairs:
            if q is not p and _paired_count(q) > 0 and _set_aligned(q, _paired_count(q) - 1):
                return True
        _set_aligned(p, k_p)  # feasible before: put it back
    return False
