"""apet-ray: parameter-efficient tuning at scale.

The public surface is small (see ``apet_ray.delta``):

    spec = DeltaSpec.pet("lora")            # or DeltaSpec.apet(op="add", distribution="discrete", budget=8000)
    deltas = attach(model, spec, seed=0)    # freezes the model, inserts masked trainable weights
    count_trainable(model)                  # exact, from the masks
    save_deltas(model, "run/deltas.safetensors")
"""

__version__ = "0.1.0"
