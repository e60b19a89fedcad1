"""A peft method as a study arm: peft wraps the backbone itself, apet-ray trains and counts it.

    spec = DeltaSpec.pet("peft:ia3")          # IA3Config at the family's roles
    attach(model, spec)                       # -> install(model, spec): get_peft_model(backbone, config)
    count_deltas(model)                       # what peft trains (requires_grad), the head left out

``peft.get_peft_model`` injects its layers into the backbone in place; the wrapper keeps
calling the backbone as before, so the loop, evaluation, DDP and the delta checkpoint (the
trainable state: peft's adapter tensors by name) are the same code as for every spec.
Without ``target_modules`` an arm sits at the family's roles (``DEFAULT_ROLES``: LoRA-style
methods at query and value, IA3 at key, value and the FFN output's input, LN tuning at the
blocks' norms), so peft LoRA
trains what apet-ray's LoRA trains on every family; roles given as target modules are
resolved through the family, anything else goes to peft as it is.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from apet_ray.delta import peft_names
from apet_ray.delta.architectures import family_of, modules_for_role
from apet_ray.delta.spec import DeltaSpec
from apet_ray.errors import UserError

# where an arm without target_modules sits, by peft type (roles; ``feedforward_modules`` IA3's)
DEFAULT_ROLES = {"ia3": {"target_modules": ("key", "value", "ffn_out"), "feedforward_modules": ("ffn_out",)},
                 "ln_tuning": {"target_modules": ("norm",)}}
LOW_RANK_ROLES = {"target_modules": ("query", "value")}  # every other type that takes target modules
PEFT_DEFAULTS = ("trainable_tokens",)  # types left to peft's own defaults
LIST_OPTIONS = ("target_modules", "feedforward_modules", "modules_to_save", "exclude_modules",
                "layers_to_transform")


def _backbone(model: nn.Module) -> nn.Module:
    inner = getattr(model, "backbone", None)
    return inner if isinstance(inner, nn.Module) else model


def peft_config(backbone: nn.Module, spec: DeltaSpec):
    """peft's config object for ``spec`` on this backbone."""
    cls = peft_names.check_options(spec.method, spec.options)
    kind = spec.method[len(peft_names.PREFIX):]
    fields = getattr(cls, "__dataclass_fields__", {})
    options = peft_names.options_dict(spec.options)
    fam = family_of(backbone)
    roles = set(fam.roles) | {"linear"}
    for key in LIST_OPTIONS:
        value = options.get(key)
        if value is None or (key == "target_modules" and value == "all-linear"):
            continue
        items = value if isinstance(value, list) else [value]  # one name is a list of one, not a regex
        if key != "layers_to_transform" and all(isinstance(v, str) and v in roles for v in items):
            items = list(dict.fromkeys(p for r in items for p in modules_for_role(backbone, fam, r)))
        options[key] = items
    if "target_modules" in fields and "target_modules" not in options and kind not in PEFT_DEFAULTS:
        for key, role_names in DEFAULT_ROLES.get(kind, LOW_RANK_ROLES).items():
            options[key] = list(dict.fromkeys(p for r in role_names for p in modules_for_role(backbone, fam, r)))
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{spec.arm}: peft refuses the config: {_first_line(exc)}") from None


def install(model: nn.Module, spec: DeltaSpec) -> None:
    """Freeze the backbone and let peft inject its layers (seeded by ``spec.seed``), in place.
    A meta-device backbone that peft cannot initialise on meta (a method that reads the
    weights, e.g. an SVD) is first given seeded random values on the CPU."""
    backbone = _backbone(model)
    config = peft_config(backbone, spec)
    total = _count({id(p): p for p in backbone.parameters()}.values())
    if any(p.is_meta for p in backbone.parameters()) and not _works_on_meta(backbone, spec):
        _materialise(backbone)
    backbone.requires_grad_(False)
    _inject(backbone, config, spec)
    model.apet_backbone_params = total  # the backbone's own count, peft's layers left out
    if not _count(p for p in backbone.parameters() if p.requires_grad):
        raise UserError(f"{spec.arm} trains nothing on this model: give it options (e.g. target_modules=...)")


def count(model: nn.Module, spec: DeltaSpec) -> int:
    """What ``spec`` trains on ``model``'s backbone, without touching it: peft applied to a
    copy on the meta device (on the CPU, with seeded random weights, where peft needs values)."""
    holder = nn.Module()
    holder.backbone = _clone(_backbone(model))
    install(holder, spec)
    return _count(p for p in holder.backbone.parameters() if p.requires_grad)


def _inject(backbone: nn.Module, config, spec: DeltaSpec) -> None:
    import peft

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(spec.seed)
        warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecations, raised inside peft
        try:
            peft.get_peft_model(backbone, config)  # wraps the backbone's layers in place
        except (TypeError, ValueError, KeyError) as exc:  # peft's word on a config that does not fit
            raise UserError(f"{spec.arm} cannot be applied to this model: {_first_line(exc)}") from None


def _works_on_meta(backbone: nn.Module, spec: DeltaSpec) -> bool:
    trial = _clone(backbone)
    try:
        _inject(trial, peft_config(trial, spec), spec)
    except UserError:
        raise
    except Exception:  # noqa: BLE001 -- peft reading meta tensors fails in several ways
        return False
    return True


def _materialise(backbone: nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    backbone.to_empty(device="cpu")
    with torch.no_grad():
        for t in [*backbone.parameters(), *backbone.buffers()]:
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen) * 0.02)
            else:
                t.zero_()


def _clone(backbone: nn.Module) -> nn.Module:
    """A deep copy on the meta device (tied weights stay tied); the original is not touched."""
    memo: dict[int, object] = {}
    for p in backbone.parameters():
        memo.setdefault(id(p), nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad))
    for b in backbone.buffers():
        memo.setdefault(id(b), torch.empty_like(b, device="meta"))
    return copy.deepcopy(backbone, memo)


def _count(params) -> int:
    return sum(p.numel() for p in params)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
