"""The PET methods, in one place: each is a preset of ``DeltaSpec`` fields (op, positions,
size), the label tables and figures show, and its place in them (registration order).

Adding a method is one ``register`` call; the spec builder, the command lines, the results
schema and the report all read this registry::

    from apet_ray.delta.methods import Method, register
    register(Method("lora_qk", "LoRA (q, k)", op="concat", positions=("query", "key"), size=8))

APET itself is not an entry: it is the general mechanism (any op, a sparse mask, an exact
budget), and may take its budget from any entry that is ``matchable``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from apet_ray.delta import peft_names
from apet_ray.delta.registry import OPS
from apet_ray.errors import UserError

APET = "apet"


@dataclass(frozen=True)
class Method:
    """A PET method as the paper sets it (paper.md §2): an all-ones mask on fixed positions."""

    name: str  # as in the results tables and on the command line
    label: str  # as in the report's tables and legends
    op: str  # a registered op (``registry.OPS``)
    positions: tuple[str, ...]
    size: int | None = None  # prompt length, rank or bottleneck; None for add
    alpha: float = 16.0  # low-rank scale numerator (concat)
    activation: str = "relu"  # the bottleneck's non-linearity (plugin)
    matchable: bool = True  # APET may take this method's count (FT's is not a PET budget)


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry (after the ones already there) and return it."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", method.name) or method.name == APET:
        raise ValueError(f"method name {method.name!r} must be lower-case letters, digits or _ (and not 'apet')")
    if method.op not in OPS:
        raise ValueError(f"method {method.name}: unknown op {method.op!r} (known: {', '.join(OPS)})")
    if not method.positions:
        raise ValueError(f"method {method.name}: needs at least one position")
    if method.name in _REGISTRY and _REGISTRY[method.name] != method:
        raise ValueError(f"method {method.name!r} is registered already, with other settings")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method (tests that register a toy one clean up with this)."""
    _REGISTRY.pop(name, None)


def get_method(name: str) -> Method:
    if name not in _REGISTRY:
        raise UserError(f"unknown method {name!r} (known: {', '.join(method_names())}, or peft:<type>)")
    return _REGISTRY[name]


def pet_methods() -> tuple[str, ...]:
    """Every registered method, FT included, in table order."""
    return tuple(_REGISTRY)


def method_names() -> tuple[str, ...]:
    """What a spec's ``method`` may be: the registered methods and APET."""
    return (*_REGISTRY, APET)


def matchable_methods() -> tuple[str, ...]:
    """The methods whose count an APET spec may match."""
    return tuple(name for name, m in _REGISTRY.items() if m.matchable)


def label_of(name: str) -> str:
    """Display label; a peft arm as ``peft LORA (r=16)``; an unknown name (an old results file) as itself."""
    if peft_names.is_peft(name):
        return peft_names.label(name)
    return _REGISTRY[name].label if name in _REGISTRY else ("APET" if name == APET else name)


def display_label(method: str, op: str = "", distribution: str = "", match: str = "",
                  budget: int | None = None) -> str:
    """The label tables, legends and progress lines show: "LoRA", "APET-Discrete (add, =LoRA)",
    "APET-Adjacent (concat, 8,000)" (a budget instead of a match), or "APET" when nothing more is known."""
    if method != APET:
        return label_of(method)
    name = f"APET-{distribution.capitalize()}" if distribution else "APET"
    inside = [op] if op else []
    if match:
        inside.append(f"={label_of(match)}")
    elif budget is not None:
        inside.append(f"{budget:,}")
    return f"{name} ({', '.join(inside)})" if inside else name


def split_methods(text: str | None) -> list[str]:
    """A ``--methods`` list: ``lora,peft:lora?target_modules=query,value,bitfit`` is three
    arms. A comma piece that is no method of its own (no ``peft:`` prefix, not a registered
    name) continues the options of the peft arm before it."""
    arms: list[str] = []
    for piece in (p.strip() for p in (text or "").split(",")):
        if not piece:
            continue
        if (arms and peft_names.is_peft(arms[-1]) and "?" in arms[-1] and not peft_names.is_peft(piece)
                and piece not in method_names()):
            arms[-1] += "," + piece
        else:
            arms.append(piece)
    return arms


def order_of(name: str) -> int:
    """Place in tables and legends: registration order, then APET, then anything else."""
    names = method_names()
    return names.index(name) if name in names else len(names)


# The paper's methods (paper.md §2). FT first: it is every table's reference row.
register(Method("ft", "FT", op="add", positions=("all",), matchable=False))
register(Method("prompt", "Prompt", op="concat", positions=("embeddings",), size=100))
# BitFit as the paper counts it (Table 2); "bitfit_all" is BitFit on every bias there is.
register(Method("bitfit", "BitFit", op="add", positions=("paper_biases",)))
register(Method("lora", "LoRA", op="concat", positions=("query", "value"), size=8, alpha=16.0))
# the release's adapter: gelu_new between the projections
register(Method("adapter", "Adapter", op="plugin", positions=("attn_out", "ffn_out"), size=24, activation="gelu_new"))
register(Method("bitfit_all", "BitFit (all biases)", op="add", positions=("biases",)))
