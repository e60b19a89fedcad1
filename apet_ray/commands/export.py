"""``apet-ray export RUN_DIR --format peft OUT`` / ``--merge OUT``: a trained run (an
``apet-ray train --out`` folder: ``run.json`` + ``deltas.safetensors``) as a peft adapter
folder, or merged into a plain Hugging Face model folder that loads without apet-ray
(docs/export.md)."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from apet_ray.errors import UserError

HEAD_FILE = "classifier.safetensors"  # a BERT-family run's head: weight (labels x hidden), bias
GPT2_CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # GPT-2's Conv1D layers, by suffix


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="a trained run as a peft adapter, or merged into a plain HF model",
                       description="Write a trained run (an `apet-ray train --out` folder) as a peft adapter folder "
                                   "(--format peft; LoRA) or as a plain Hugging Face model with its deltas folded into "
                                   "the weights (--merge; FT, BitFit, add, add-weight, LoRA). See docs/export.md.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder of `apet-ray train --out`: run.json + deltas.safetensors")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--format", choices=["peft"], help="peft: adapter_config.json + adapter_model.safetensors")
    how.add_argument("--merge", action="store_true", help="fold the deltas into the weights: a plain HF model folder")
    p.add_argument("out", metavar="OUT", help="the folder to write (must not exist, or be empty)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder: choose another OUT")
    model, cfg = load_run(Path(args.run_dir))
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent if out.parent.exists() else None) as tmp:
        staging = Path(tmp) / "out"
        staging.mkdir()
        what = write_peft(model, staging) if args.format == "peft" else write_merged(model, cfg, staging)
        if out.exists():
            out.rmdir()
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(out))
    print(f"[apet-ray] {cfg.spec.label} from {args.run_dir}: {what} in {out}")
    return 0


def load_run(run_dir: Path):
    """The run's model, rebuilt as it trained (same model, seed, spec) with its final deltas."""
    from apet_ray.delta import attach, load_state, read_deltas
    from apet_ray.models import build_model
    from apet_ray.run import TrainConfig

    record_file, deltas_file = run_dir / "run.json", run_dir / "deltas.safetensors"
    if not record_file.is_file() or not deltas_file.is_file():
        raise UserError(f"{run_dir} is not a finished `apet-ray train --out` folder (needs run.json and "
                        "deltas.safetensors)")
    try:
        cfg = TrainConfig.from_dict(json.loads(record_file.read_text())["record"]["config"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{record_file} is not a readable run record ({type(exc).__name__}: {exc})") from None
    tensors, meta = read_deltas(deltas_file)
    if meta.get("spec") != cfg.spec.to_json():
        raise UserError(f"{deltas_file} holds other deltas than {record_file} describes")
    head = tensors.get("head.1.weight")
    num_labels = int(head.shape[0]) if head is not None else _num_labels(cfg)
    model, _ = build_model(cfg.model, num_labels=num_labels, seed=cfg.seed)
    attach(model, cfg.spec)
    if hasattr(model, "head") and "head.1.weight" not in tensors:
        model.head.requires_grad_(False)  # trained with a frozen head: its seeded init, rebuilt above
    load_state(model, tensors, source=str(deltas_file))
    model.apet_run_config = cfg
    return model.eval(), cfg


def _num_labels(cfg) -> int | None:
    task = cfg.training_task()
    return task.num_labels if task.is_classification else None


def write_peft(model, out: Path) -> str:
    from safetensors.torch import save_file

    from apet_ray.delta.peft_export import lora_adapter
    from apet_ray.delta.peft_names import INSTALL, peft_available

    if not peft_available():
        raise UserError(INSTALL)
    if model.apet_spec.is_peft:
        return _write_peft_arm(model, out)
    config, tensors = lora_adapter(model)  # refuses, in one line, what peft cannot express
    import peft

    peft.LoraConfig(**config).save_pretrained(str(out))
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return (f"a peft LoRA adapter (r {config['r']}, alpha {config['lora_alpha']:g}, {len(config['target_modules'])} "
            "layers; load it with PeftModel.from_pretrained(<the same backbone>, OUT))")


def _write_peft_arm(model, out: Path) -> str:
    """A peft arm's run: peft's own adapter, saved by peft from a fresh copy holding the trained tensors."""
    import peft
    import torch

    from apet_ray.delta.peft_arm import peft_config

    spec = model.apet_spec
    fresh, _ = build_backbone_like(model)
    wrapped = peft.get_peft_model(fresh, peft_config(fresh, spec))
    trained = {n.removeprefix("backbone."): p for n, p in model.named_parameters()
               if p.requires_grad and n.startswith("backbone.")}
    theirs = dict(wrapped.base_model.model.named_parameters())
    if set(trained) - set(theirs):
        raise UserError(f"{spec.arm}: peft built other layers than the run trained ({sorted(set(trained) - set(theirs))[:2]})")
    with torch.no_grad():
        for name, tensor in trained.items():
            theirs[name].copy_(tensor)
    wrapped.save_pretrained(str(out))
    return f"peft's own {spec.label} adapter (PeftModel.from_pretrained(<the same backbone>, OUT))"


def build_backbone_like(model):
    from apet_ray.models import build_model

    cfg = model.apet_run_config
    head = getattr(model, "head", None)
    built, info = build_model(cfg.model, num_labels=head[1].out_features if head is not None else None, seed=cfg.seed)
    return built.backbone, info


def write_merged(model, cfg, out: Path) -> str:
    from safetensors.torch import save_file

    from apet_ray.delta.architectures import family_of
    from apet_ray.delta.merge import merge
    from apet_ray.models import load_tokenizer

    head = getattr(model, "head", None)
    backbone = merge(model)  # refuses, in one line, what is not linear in the weights
    if family_of(backbone).name == "gpt2":
        _linear_as_conv1d(backbone)
    backbone.save_pretrained(str(out), safe_serialization=True)
    load_tokenizer(cfg.model).save_pretrained(str(out))
    if head is None:
        return "a plain Hugging Face model (its LM head included)"
    linear = head[1]
    save_file({"weight": linear.weight.detach().cpu().contiguous(), "bias": linear.bias.detach().cpu().contiguous()},
              str(out / HEAD_FILE), metadata={"format": "pt", "pooling": "mean over attention_mask",
                                               "input": "last_hidden_state"})
    return (f"a plain Hugging Face encoder (AutoModel) and its classifier head in {HEAD_FILE} (logits = head(mean of "
            "last_hidden_state over the attention mask))")


def _linear_as_conv1d(backbone) -> None:
    """apet-ray runs GPT-2's Conv1D layers as nn.Linear (``models.causal``): back to Conv1D,
    the layout GPT-2's checkpoints have, before saving."""
    from transformers.pytorch_utils import Conv1D

    for name, module in list(backbone.named_modules()):
        if name.endswith(GPT2_CONV1D) and type(module).__name__ == "Linear":
            conv = Conv1D(module.out_features, module.in_features)
            conv.weight.data = module.weight.detach().t().contiguous()
            conv.bias.data = module.bias.detach().clone()
            parent, _, child = name.rpartition(".")
            setattr(backbone.get_submodule(parent), child, conv)
