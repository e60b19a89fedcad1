"""peft methods as study arms, by name: ``peft:<config type>`` plus ``?key=value&...`` options.

    peft:ia3                                    IA3Config(), at the family's roles
    peft:lora?r=16&target_modules=query,value   LoraConfig(r=16, target_modules=[...])

This module only reads names (no torch, no peft import until a name is checked);
``peft_arm`` builds the configs and wraps the backbone. Values are parsed as int, float,
bool (``true``/``false``), ``none``, or a comma list of those; anything else stays text.
"""

from __future__ import annotations

import importlib.util
import re

from apet_ray.errors import UserError

PREFIX = "peft:"
INSTALL = "install apet-ray[peft] (pip install 'apet-ray[peft]') to use peft methods"

# peft types that cannot be study arms here, and why
REFUSED = {
    "adalora": "its rank allocator must be called by the training loop every step (update_and_allocate) and its "
               "orthogonality loss is added in PeftModel.forward, which apet-ray's wrappers do not call",
    "xlora": "it mixes LoRA adapters trained before (adapters=...), it does not train a method of its own",
    "poly": "it routes each example by task ids given to PeftModel.forward (multi-task), which a single-task run has not",
    "adaption_prompt": "it is a prompt method for Llama-style attention only, inserted as peft's own attention wrapper",
    "shadow": "its layers need peft's PeftModel.forward around the backbone (called directly, peft 0.21's shadow "
              "layers fail: 'ShadowCarrier' object has no attribute 'view')",
}
PROMPT_LEARNING = ("peft prompt-learning methods prepend virtual tokens or prefixes in PeftModel.forward, which "
                   "apet-ray's wrappers bypass (they call the backbone with input embeddings): use apet-ray's "
                   "prompt method or APET concat at embeddings")


def is_peft(name: object) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def parse_arm(text: str) -> tuple[str, str]:
    """``peft:LoRA?r=16&alpha=...`` -> (``peft:lora``, canonical options ``lora_alpha=...&r=16``):
    the type lower-cased, options sorted by key, spaces dropped. No peft import."""
    head, _, query = text.strip().partition("?")
    kind = head[len(PREFIX):].strip().lower()
    kind = kind[: -len("config")] if kind.endswith("config") and kind != "config" else kind
    if not re.fullmatch(r"[a-z][a-z0-9_]*", kind):
        raise UserError(f"{text!r}: expected peft:<config type>, e.g. peft:lora or peft:ia3")
    return PREFIX + kind, canonical_options(query, text)


def canonical_options(query: str, where: str = "") -> str:
    pairs = {}
    for part in filter(None, (p.strip() for p in query.split("&"))):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise UserError(f"{where or query!r}: options are key=value pairs joined by &, not {part!r}")
        if key in pairs:
            raise UserError(f"{where or query!r}: option {key} is given twice")
        pairs[key] = ",".join(v.strip() for v in value.split(","))
    return "&".join(f"{k}={pairs[k]}" for k in sorted(pairs))


def arm_name(method: str, options: str) -> str:
    """The whole arm as written on a command line: ``peft:lora?r=16``."""
    return f"{method}?{options}" if options else method


def options_dict(options: str) -> dict[str, object]:
    """Typed values: int, float, bool, None, or a list of them (a comma list)."""
    out: dict[str, object] = {}
    for part in filter(None, options.split("&")):
        key, _, value = part.partition("=")
        items = [_scalar(v) for v in value.split(",")]
        out[key] = items if len(items) > 1 else items[0]
    return out


def _scalar(text: str) -> object:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def label(name: str) -> str:
    """``peft:lora?r=16`` -> ``peft LORA (r=16)``."""
    method, _, options = name.partition("?")
    text = f"peft {method[len(PREFIX):].upper()}"
    return f"{text} ({options.replace('&', ', ')})" if options else text


def slug(name: str) -> str:
    """A file-name-safe short form (the options are in the trial id's digest): ``peft-lora``."""
    return name.partition("?")[0].replace(":", "-")


def twin_op(method: str) -> str:
    """The op APET uses when it is matched to this peft arm in a study: LoRA-style arms are
    low-rank concatenations, IA3's vectors are Adds; anything else masks the linear weights."""
    return {"peft:lora": "concat", "peft:ia3": "add"}.get(method.partition("?")[0], "add-weight")


def peft_available() -> bool:
    try:
        return importlib.util.find_spec("peft") is not None
    except (ImportError, ValueError):  # a broken or stubbed-out install
        return False


def config_class(method: str):
    """peft's config class for ``peft:<type>`` (by PeftType value or config class name); a
    missing peft, an unknown type or one that cannot be an arm is one line."""
    if not peft_available():
        raise UserError(f"{method}: {INSTALL}")
    import peft

    kind = method[len(PREFIX):].partition("?")[0]
    mapping = {str(getattr(k, "value", k)).lower(): v for k, v in peft.PEFT_TYPE_TO_CONFIG_MAPPING.items()}
    by_class = {v.__name__.lower().removesuffix("config"): v for v in mapping.values()}
    cls = mapping.get(kind) or by_class.get(kind)
    if cls is None:
        raise UserError(f"unknown peft method {kind!r} (peft {peft.__version__} has: {', '.join(sorted(mapping))})")
    kind = next(k for k, v in mapping.items() if v is cls)
    if kind in REFUSED:
        raise UserError(f"peft:{kind} cannot be a study arm: {REFUSED[kind]}")
    if issubclass(cls, peft.PromptLearningConfig):
        raise UserError(f"peft:{kind} cannot be a study arm: {PROMPT_LEARNING}")
    return cls


def peft_type(method: str) -> str:
    """The canonical ``peft:<PeftType value, lower case>`` of a config-class spelling (``peft:loraconfig``)."""
    import peft

    cls = config_class(method)
    kind = next(str(getattr(k, "value", k)).lower() for k, v in peft.PEFT_TYPE_TO_CONFIG_MAPPING.items() if v is cls)
    return PREFIX + kind


def check_options(method: str, options: str):
    """The config class, after checking every option is one of its fields."""
    cls = config_class(method)
    fields = [f for f in getattr(cls, "__dataclass_fields__", {}) if f not in ("peft_type", "task_type")]
    unknown = [k for k in options_dict(options) if k not in fields]
    if unknown:
        raise UserError(f"{method}: {cls.__name__} has no option {', '.join(unknown)} (it has: {', '.join(fields)})")
    return cls
