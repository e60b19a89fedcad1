"""The APET delta engine: masked trainable weights W~ = W * m inserted by Add,
Concatenate or Plugin, with exact trainable-parameter counts.

    from apet_ray.delta import DeltaSpec, attach, count_deltas, save_deltas

    spec = DeltaSpec.apet(op="add", distribution="discrete", match="lora")
    plan = attach(model, spec)        # freezes the backbone, inserts the deltas
    assert count_deltas(model) == plan.count == plan.requested
"""

from apet_ray.delta.attach import (
    attach,
    count_backbone,
    count_deltas,
    count_trainable,
    trainable_state_dict,
)
from apet_ray.delta.checkpoint import load_deltas, load_state, read_deltas, save_deltas, spec_of
from apet_ray.delta.masked import MaskedTensor
from apet_ray.delta.masks import MASKS
from apet_ray.delta.plan import Plan, make_plan
from apet_ray.delta.methods import (OPS, Method, label_of, matchable_methods, method_names, pet_methods, register,
                                    split_methods)
from apet_ray.delta.spec import DISTRIBUTIONS, DeltaSpec

__all__ = [
    "DeltaSpec", "Plan", "MaskedTensor", "MASKS", "OPS", "DISTRIBUTIONS",
    "Method", "register", "pet_methods", "method_names", "matchable_methods", "label_of", "split_methods",
    "attach", "make_plan", "count_deltas", "count_trainable", "count_backbone", "trainable_state_dict",
    "save_deltas", "load_deltas", "load_state", "read_deltas", "spec_of",
]
