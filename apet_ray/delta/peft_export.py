"""apet-ray's LoRA as a peft adapter (``apet-ray export --format peft``; docs/export.md).

A LoRA spec (full masks on low-rank pairs beside linear layers, nothing else) is peft's
LoRA exactly: the same ``lora_A`` (r x in) and ``lora_B`` (out x r) layout and scale
alpha / r. Everything else is refused in one line: sparse APET masks (peft's LoRA is
dense), a plugin (peft has no bottleneck adapter after a sub-layer), a soft prompt (peft's
prompt tuning lives in its task-specific PeftModel.forward), Add / BitFit / FT (not
an adapter: merge them instead, ``--merge``).
"""

from __future__ import annotations

import torch
from torch import nn

from apet_ray.delta.architectures import family_of
from apet_ray.delta.masked import MaskedTensor
from apet_ray.delta.layers import AddedOutput, AddedParam, CrossPositionBias, DeltaLinear
from apet_ray.delta.ops import LowRank, Plugin, PromptTokens
from apet_ray.errors import UserError

NOT_PEFT = {
    "masks": "its APET masks are sparse; peft's LoRA trains every entry of its factors",
    "plugin": "peft has no bottleneck adapter after a sub-layer (the adapter/plugin op)",
    "prompt": "peft's prompt tuning prepends its tokens in a task-specific PeftModel.forward, not on a backbone",
    "add": "add, add-weight, BitFit and FT change the model's own weights, not an adapter: use --merge",
}
CONV1D_FAMILIES = ("gpt2",)  # peft's LoRA on GPT-2's Conv1D layers stores the base weight (in, out)


def lora_adapter(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """(``adapter_config.json`` fields, ``adapter_model.safetensors`` tensors) of a LoRA model."""
    spec = getattr(model, "apet_spec", None)
    if spec is None:
        raise UserError("the model has no deltas attached")
    if spec.is_peft:
        raise UserError("this run trained a peft arm: its deltas are peft's already (see docs/export.md)")
    backbone = getattr(model, "backbone", model)
    if any(isinstance(m, PromptTokens) for m in model.modules()):
        raise UserError(f"not expressible in peft: {NOT_PEFT['prompt']}")
    deltas = {id(m.values) for m in backbone.modules() if isinstance(m, MaskedTensor)}
    if any(p.requires_grad and id(p) not in deltas for p in backbone.parameters()):  # FT: in place
        raise UserError(f"not expressible in peft: {NOT_PEFT['add']}")
    pairs: dict[str, LowRank] = {}
    for path, module in backbone.named_modules():
        if isinstance(module, (AddedParam, AddedOutput, CrossPositionBias)):
            raise UserError(f"not expressible in peft: {NOT_PEFT['add']}")
        if not isinstance(module, DeltaLinear):
            continue
        if module.weight_delta is not None or module.bias_delta is not None:
            raise UserError(f"not expressible in peft: {NOT_PEFT['add']}")
        for name in module.extras:
            extra = getattr(module, name)
            if isinstance(extra, Plugin):
                raise UserError(f"not expressible in peft: {NOT_PEFT['plugin']}")
            if not isinstance(extra, LowRank):
                raise UserError(f"not expressible in peft: {path} has a {type(extra).__name__} delta")
            if extra.A is None or extra.B is None or not (extra.A.is_full and extra.B.is_full):
                raise UserError(f"not expressible in peft: {NOT_PEFT['masks']}")
            pairs[path] = extra
    if not pairs:
        raise UserError("not expressible in peft: the run trained no low-rank pairs")
    ranks = {p.A.shape[0] for p in pairs.values()}
    scales = {p.scale for p in pairs.values()}
    if len(ranks) != 1 or len(scales) != 1:
        raise UserError("not expressible in one peft LoRA config: the layers have different ranks or scales")
    r, scale = ranks.pop(), scales.pop()
    tensors = {}
    for path, pair in pairs.items():
        tensors[f"base_model.model.{path}.lora_A.weight"] = pair.A().detach().cpu().contiguous()
        tensors[f"base_model.model.{path}.lora_B.weight"] = pair.B().detach().cpu().contiguous()
    config = {
        "peft_type": "LORA", "task_type": None, "r": r, "lora_alpha": scale * r, "lora_dropout": 0.0,
        "target_modules": sorted(pairs), "bias": "none", "fan_in_fan_out": family_of(backbone).name in CONV1D_FAMILIES,
        "use_rslora": False, "init_lora_weights": True, "modules_to_save": None,
        "base_model_name_or_path": getattr(getattr(backbone, "config", None), "_name_or_path", None) or None,
    }
    return config, tensors
