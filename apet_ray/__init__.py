"""apet-ray: parameter-efficient tuning at scale.

The public surface is small (see ``apet_ray.delta``):

    spec = DeltaSpec.pet("lora")            # or DeltaSpec.apet(op="add-weight", distribution="discrete", budget=8000)
    plan = attach(model, spec)              # freezes the backbone, inserts masked trainable weights
    count_deltas(model)                     # exact, from the masks (== plan.count)
    save_deltas(model, "run/deltas.safetensors")
"""

__version__ = "0.1.0"
