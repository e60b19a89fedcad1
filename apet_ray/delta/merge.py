"""Fold deltas that are linear in the weights into the frozen backbone, leaving a plain
Hugging Face model (``apet-ray export --merge``; docs/export.md).

    merge(model)    # in place: every wrapper folded into its layer and replaced by it

Mergeable, because each is a change of weights the model already has: full fine-tuning
(trained in place), add-weight (W + W~), LoRA and APET concat pairs (W + scale * B~ A~),
add (a vector on a layer's output: the layer's bias + W~, a norm's bias + W~). Not
mergeable, each refused in one line: a soft prompt (new input positions), a plugin
(a non-linear bottleneck after its layer), a vector where the model has no bias to take it
(T5's and Llama's linear layers, an RMS norm, the cross-attention tables and LM-head bias
the release's BitFit adds on T5), a peft arm (peft's own ``merge_and_unload``).
"""

from __future__ import annotations

import torch
from torch import nn

from apet_ray.delta.layers import AddedOutput, AddedParam, CrossPositionBias, DeltaLinear
from apet_ray.delta.ops import LowRank, Plugin, PromptTokens
from apet_ray.errors import UserError

WHY = {
    "prompt": "a soft prompt adds input positions; no weight of the model can hold it",
    "plugin": "a plugin (adapter) is a non-linear bottleneck after its layer; no weight of the model can hold it",
    "peft": "a peft arm's layers are peft's own: export it with --format peft, load it with peft and call "
            "merge_and_unload() (for the peft methods that can merge)",
}


def merge(model: nn.Module) -> nn.Module:
    """Fold the deltas of ``model`` (an attached wrapper or backbone) into its weights, in
    place, and put every wrapped layer back as the plain layer it wraps. Returns the backbone."""
    spec = getattr(model, "apet_spec", None)
    if spec is not None and spec.is_peft:
        raise UserError(f"not mergeable: {WHY['peft']}")
    if any(isinstance(m, PromptTokens) for m in model.modules()):
        raise UserError(f"not mergeable: {WHY['prompt']}")
    backbone = getattr(model, "backbone", model)
    wrapped = [(n, m) for n, m in backbone.named_modules()
               if isinstance(m, (DeltaLinear, AddedParam, AddedOutput, CrossPositionBias))]
    uses: dict[int, int] = {}
    for _, p in backbone.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    for path, module in wrapped:
        _check(path, module)
        if isinstance(module, AddedParam) and any(uses.get(id(getattr(module.base, n)), 0) > 1 for n in module.deltas):
            raise UserError(f"not mergeable: the delta on {path} trains one use of a tied weight (the other, "
                            "e.g. the LM head, stays as it was); folded in, it would change both")
    with torch.no_grad():
        for path, module in wrapped:
            _fold(module)
        for path, module in sorted(wrapped, key=lambda item: -item[0].count(".")):  # innermost first
            parent, _, name = path.rpartition(".")
            setattr(backbone.get_submodule(parent) if parent else backbone, name, module.base)
    backbone.requires_grad_(False)
    return backbone


def _check(path: str, module: nn.Module) -> None:
    if isinstance(module, DeltaLinear):
        for name in module.extras:
            extra = getattr(module, name)
            if isinstance(extra, Plugin):
                raise UserError(f"not mergeable: {WHY['plugin']} ({path})")
            if not isinstance(extra, LowRank):
                raise UserError(f"not mergeable: {path} has a {type(extra).__name__} delta, not linear in the weights")
        if module.bias_delta is not None and module.base.bias is None:
            raise UserError(f"not mergeable: {path} has no bias in this model to take the added vector (add/BitFit "
                            "on a bias-free layer; a plain model of this type cannot hold it)")
    elif isinstance(module, AddedOutput) and module.bias_delta is not None:
        raise UserError(f"not mergeable: {path} is a norm without a bias; the vector added to its output has no "
                        "weight to go into")
    elif isinstance(module, CrossPositionBias) and module.relative_attention_bias is not None:
        raise UserError(f"not mergeable: {path} is a cross-attention with a relative-position table the model "
                        "does not have (the release's T5 BitFit)")


def _fold(module: nn.Module) -> None:
    if isinstance(module, DeltaLinear):
        base = module.base
        weight = base.weight
        if module.weight_delta is not None:
            weight.add_(module.weight_delta().to(weight.dtype))
        if module.bias_delta is not None:
            b = module.bias_delta().to(base.bias.dtype)
            if module.bias_rows is not None:
                b = b.new_zeros(base.bias.shape[0]).index_copy(0, module.bias_rows, b)
            elif b.shape[0] < base.bias.shape[0]:
                b = nn.functional.pad(b, (0, base.bias.shape[0] - b.shape[0]))
            base.bias.add_(b)
        for name in module.extras:
            pair = getattr(module, name)
            if pair.A is not None and pair.B is not None:
                weight.add_((pair.B().float() @ pair.A().float() * pair.scale).to(weight.dtype))
    elif isinstance(module, AddedParam):
        for name, delta in module.deltas.items():
            param = getattr(module.base, name)
            param.add_(delta().to(param.dtype))
