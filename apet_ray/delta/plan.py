"""Planning: turn a spec into placements with exact per-tensor counts, from shapes alone.

A plan never touches weight values, so it runs on a meta-device model built from a
config (seconds, even for 11B parameters). ``attach`` then materialises it. What is
particular to a placement kind -- its slots, its largest size, its pair -- comes from
``registry``; the rules here hold for every kind.

Budget rules
- The budget (or the matched method's count) is split over every tensor of every
  placement in proportion to the tensor's size, by largest remainder: the sum is exact.
- Add's vectors sit at fixed layer outputs and add-weight's deltas on existing weights, so
  their capacity is fixed (any budget up to it is exact); a larger budget is refused.
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

import dataclasses
import math
from dataclasses import dataclass, field

from torch import nn

from apet_ray.delta import anywhere, peft_arm, peft_names
from apet_ray.delta.anywhere import ANY
from apet_ray.delta.architectures import Family, family_of, modules_for_role
from apet_ray.delta.methods import label_of
from apet_ray.delta.registry import OPS, PLACEMENT_KINDS, REFUSED, Host, Placement, Slot
from apet_ray.delta.spec import DeltaSpec, check_budget
from apet_ray.errors import UserError


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
    if peft_names.is_peft(spec.match):  # a peft arm's exact count on the same model
        requested = peft_arm.count(model, DeltaSpec.pet(spec.match))
    elif spec.match is not None:
        requested = make_plan(model, DeltaSpec.pet(spec.match)).count
    plan = Plan(spec=spec, family=fam, requested=requested)
    if ANY in spec.positions:  # whole tensors at random, each with its count (anywhere.py)
        hosts = anywhere.hosts(backbone, fam, spec, check_budget(requested))
    else:
        hosts = _hosts(backbone, fam, spec)

    size = None
    sized = [h for h in hosts if PLACEMENT_KINDS[h.kind].max_size is not None]
    if sized:
        size = spec.size if spec.distribution == "full" or spec.size is not None else _pick_size(backbone, hosts, spec, requested)
        # the weights would be allocated densely before the mask is drawn: a size no layer
        # can use is a mistake, refused here rather than as an out-of-memory
        most = _max_size(backbone, hosts) if spec.size is not None else None
        if most is not None and spec.size > most:
            raise UserError(f"size {spec.size:,} is larger than {spec.op} at {', '.join(spec.positions)} can use on "
                            f"this model (at most {most:,}: {PLACEMENT_KINDS[sized[0].kind].size_limit})")
    for host in hosts:
        plan.placements.append(_placement(backbone, host, prefix + host.path if host.path else prefix.rstrip("."), size))

    if spec.distribution == "full":
        for p in plan.placements:
            for s in p.slots:
                s.k = s.numel
    elif all(h.k is not None for h in hosts):  # counted by the hosts themselves (one slot each)
        for p, h in zip(plan.placements, hosts):
            p.slots[0].k = h.k
    else:
        _allocate(plan, requested)
        if spec.distribution == "adjacent":
            _align_pairs(plan)
    return plan


# ---- hosts: which modules an op touches -------------------------------------------

def _hosts(backbone: nn.Module, fam: Family, spec: DeltaSpec) -> list[Host]:
    """Every host of every position of the spec: the op's own for a special position,
    its linear kind on each layer of a linear role."""
    op = OPS[spec.op]
    dead = set()  # layers an APET mask of this op leaves out (registry.Op.dead_roles)
    if spec.distribution != "full":
        dead = {p for r in op.dead_roles if r in fam.roles for p in modules_for_role(backbone, fam, r)}
    hosts: list[Host] = []
    for role in spec.positions:
        if role in op.at:
            found = op.at[role](backbone, fam, role, spec)
        elif role in REFUSED:
            raise UserError(REFUSED[role].format(op=spec.op, role=role))
        elif op.linear is None:
            raise UserError(f"op {spec.op} takes no linear positions, not {role!r}")
        else:
            found = [Host(op.linear, p) for p in modules_for_role(backbone, fam, role)]
        # a host that names its output rows has left a fused layer's key rows out itself
        kept = [h for h in found if h.path not in dead or h.out_rows is not None]
        if found and not kept:
            raise UserError(f"{spec.op} at {role!r}: {op.dead_because}")
        hosts += kept
    if not hosts:
        raise UserError(f"positions {', '.join(spec.positions)} match nothing in this model")
    # a module named twice (fused attention: "query" and "value" are one layer) hosts one delta
    hosts = list(dict.fromkeys(hosts))
    kinds = {h.kind for h in hosts}
    sized = [k for k in PLACEMENT_KINDS.values() if k.max_size is not None and k.name in kinds]
    if len(sized) > 1:
        raise UserError(f"a {sized[0].label} and {sized[1].label}s have different sizes: give them separate specs")
    return hosts


def _placement(backbone: nn.Module, host: Host, path: str, size: int | None) -> Placement:
    kind = PLACEMENT_KINDS[host.kind]
    slots = kind.slots(backbone.get_submodule(host.path), size, host.param)
    if host.rows is not None:  # a vector over fewer rows than the layer's outputs
        slots = [dataclasses.replace(s, shape=(host.rows,)) for s in slots]
    if host.out_rows is not None:  # ... or over some of them (a fused q/k/v layer's, not the key's)
        slots = [dataclasses.replace(s, shape=(len(host.out_rows),)) for s in slots]
    return Placement(host.kind, path, slots, size=size if kind.max_size is not None else None, param=host.param,
                     out_rows=host.out_rows)


# ---- sizes and budgets ---------------------------------------------------------------

def _pick_size(backbone: nn.Module, hosts: list[Host], spec: DeltaSpec, k: int) -> int:
    """Smallest size whose new weights hold ceil(k / density) entries."""
    def capacity(size: int) -> int:
        return sum(s.numel for h in hosts for s in _placement(backbone, h, h.path, size).slots)

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


def _max_size(backbone: nn.Module, hosts: list[Host]) -> int:
    """The largest size every sized host can use."""
    return min(PLACEMENT_KINDS[h.kind].max_size(backbone, backbone.get_submodule(h.path))
               for h in hosts if PLACEMENT_KINDS[h.kind].max_size is not None)


def _allocate(plan: Plan, k: int) -> None:
    k = check_budget(k)
    slots = [s for p in plan.placements for s in p.slots]
    capacity = sum(s.numel for s in slots)
    if k > capacity:
        spec = plan.spec
        whose = f" ({label_of(spec.match)}'s count)" if spec.match else ""
        hint = f": {OPS[spec.op].too_large}" if OPS[spec.op].too_large else ""
        raise UserError(f"budget {k:,}{whose} is larger than the capacity of {spec.op} at "
                        f"{', '.join(spec.positions)} on this model (at most {capacity:,}){hint}")
    # largest remainder: floor shares, then one more to the largest fractional parts
    shares = [k * s.numel // capacity for s in slots]
    rests = sorted(range(len(slots)), key=lambda i: (-(k * slots[i].numel % capacity), i))
    for i in rests[: k - sum(shares)]:
        shares[i] += 1
    for s, share in zip(slots, shares):
        s.k = share
    _no_dead_values(plan)


def _sides(p: Placement) -> list[Slot]:
    return [s for s in p.slots if s.name in p.pair.sides]


def _free(p: Placement) -> Slot | None:
    return next((s for s in p.slots if s.name == p.pair.free), None)


def _no_dead_values(plan: Plan) -> None:
    """Move entries so that no counted value sits where it can never train.

    Only small budgets need it (rank 1, a handful of entries per layer). The count stays
    exact: an entry moves within its placement, or to another placement that trains.
    """
    pairs = [p for p in plan.placements if p.pair is not None]
    orphans = 0
    for p in pairs:
        sides = _sides(p)
        free = _free(p)  # a plugin's up bias: trains without the pair
        paired = sum(s.k for s in p.slots) - (free.k if free else 0)
        if paired == 0 or all(s.k for s in sides):
            continue
        if paired == 1:  # one entry cannot feed both sides: a free slot takes it, else it leaves
            next(s for s in p.slots if s.k and s is not free).k = 0
            if free is not None and free.k < free.numel:
                free.k += 1
            else:
                orphans += 1
            continue
        for side in sides:  # an empty side takes one entry from a slot that can spare it
            if side.k == 0:
                spare = [s for s in p.slots if s is not free and s.k >= (2 if s.name in p.pair.sides else 1)]
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
                        f"{PLACEMENT_KINDS[pairs[0].kind].label} needs entries on both sides")
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
    slots = {s.name: s for s in p.slots}
    return slots[p.pair.row].shape[1] + (p.pair.row_bias is not None), slots[p.pair.col].shape[0]


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
    slots = {s.name: s for s in p.slots}
    row = slots[p.pair.row]
    if p.pair.row_bias is not None:
        bias = slots[p.pair.row_bias]
        bias.k = k_row // (row.shape[1] + 1)  # the augmented rows' last column
        k_row -= bias.k
    row.k = k_row
    slots[p.pair.col].k = k_col
    return True


def _align_pairs(plan: Plan) -> None:
    """Re-split each Adjacent pair so both sides cover the same indices; the count stays
    exact. A pair whose share is one entry past whole indices hands that entry on (to its
    free slot, else to the next pair)."""
    pairs = [p for p in plan.placements if p.pair is not None]
    carry = 0
    for p in pairs:
        free = _free(p)
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
    return sum(s.k for s in p.slots if s.name != p.pair.free)


def _room(p: Placement, k: int) -> bool:
    return k <= sum(s.numel for s in p.slots if s.name != p.pair.free)


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
