"""Whole-model training-step time, side by side, as ratios to the frozen floor.

On the offline all-MiniLM-L6-v2 (real weights) at batch 32 x sequence 128, one training
step (forward, backward, AdamW) of every method and of every APET op x distribution at
LoRA's exact count, against
  (a) the frozen floor: the same model and batch, forward + backward to the inputs, no
      trainable delta (the least any PET method can cost);
  (b) peft's LoRA (r=8, alpha=16, query/value) at the same count;
  (c) full fine-tuning;
and a naive dense weight-times-mask delta (what Add-Discrete costs without the sparse
parameterisation), and Add-Discrete at 0.2 % of the linear weights (``@0.2%``: the
density below which its values gradient gathers k dot products); a ``+pytorch`` variant
is the same delta with the compiled sampled kernel held off (``sampled_kernel.disabled``). ``--precision bf16``
runs under autocast with the frozen linears and embeddings stored in bf16, as a bf16 run
does (``distributed.store_frozen_in_bf16``), and adds the speed-up over the fp32 table. Variants run round-robin (warm-up, then repetitions, medians), so
machine noise hits them alike. Also records trainable and optimizer-state bytes.

    python benchmarks/step_time.py [--reps 15] [--model minilm|bert-base|t5-base] [--device cpu|cuda] [--precision bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class DenseMasked(nn.Module):
    """The naive baseline: a full-size trainable delta times a dense {0,1} mask."""

    def __init__(self, base: nn.Linear, mask: torch.Tensor):
        super().__init__()
        self.base = base
        self.delta = nn.Parameter(torch.zeros_like(base.weight))
        self.register_buffer("mask", mask.to(base.weight.dtype))

    def forward(self, x):
        return F.linear(x, self.base.weight + self.delta * self.mask, self.base.bias)


def build(variant: str, model_name: str, bf16: bool = False):
    from apet_ray.delta import DeltaSpec, attach
    from apet_ray.delta.layers import DeltaLinear
    from apet_ray.models import build_model

    variant = variant.removesuffix("+pytorch")
    model, _ = build_model(model_name, num_labels=2)
    model.head.requires_grad_(False)  # the same for all: compare the deltas only
    if variant == "floor":
        model.requires_grad_(False)
    elif variant == "peft-lora":
        import peft

        model.requires_grad_(False)
        model.backbone = peft.get_peft_model(model.backbone, peft.LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"]))
    elif variant == "dense-mask":
        attach(model, DeltaSpec.apet("add-weight", "discrete", match="lora"))  # same masks as add-weight-discrete
        for name, module in list(model.named_modules()):
            if isinstance(module, DeltaLinear) and module.weight_delta is not None:
                mask = torch.zeros(module.weight_delta.numel_dense)
                mask[module.weight_delta.indices] = 1
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent), attr, DenseMasked(module.base, mask.view(module.weight_delta.shape)))
    elif variant in ("lora", "adapter", "bitfit", "prompt", "ft"):
        attach(model, DeltaSpec.pet(variant))
    elif "@" in variant:  # apet-add-weight-discrete@0.2%: that share of the op's capacity at its positions
        from apet_ray.delta.plan import make_plan

        name, density = variant.split("@")
        op, dist = name.removeprefix("apet-").rsplit("-", 1)
        capacity = make_plan(model, DeltaSpec.apet(op, dist, budget=1)).capacity
        attach(model, DeltaSpec.apet(op, dist, budget=round(float(density.rstrip("%")) / 100 * capacity)))
    else:  # apet-<op>-<distribution>, matched to LoRA's count
        op, dist = variant.removeprefix("apet-").rsplit("-", 1)
        attach(model, DeltaSpec.apet(op, dist, match="lora"))
    if bf16:  # as a bf16 run does: frozen linears and embeddings stored in bf16
        from apet_ray.distributed import store_frozen_in_bf16

        store_frozen_in_bf16(model)
    model.train()
    return model


def step_fn(model, variant, batch, labels, opt, bf16: bool = False):
    import contextlib

    from apet_ray.delta import sampled_kernel

    # "+pytorch": the same delta with the compiled sampled kernel held off (PyTorch's paths)
    paths = sampled_kernel.disabled if variant.endswith("+pytorch") else contextlib.nullcontext

    def step():
        with paths(), torch.autocast(batch["input_ids"].device.type, dtype=torch.bfloat16, enabled=bf16):
            run()

    def run():
        if variant == "floor":  # forward + backward to the inputs: nothing trains
            embeds = model.backbone.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_()
            hidden = model.backbone(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).last_hidden_state
            F.cross_entropy(model.head(hidden.mean(1)), labels).backward()
            return
        model(**batch, labels=labels)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: autocast around forward and backward (what --precision auto picks on AMX CPUs)")
    p.add_argument("--variants", default="floor,peft-lora,lora,apet-add-weight-adjacent,apet-add-weight-discrete,"
                   "apet-add-weight-discrete+pytorch,apet-add-weight-discrete@0.2%,apet-add-weight-discrete@0.2%+pytorch,apet-concat-adjacent,apet-concat-discrete,apet-plugin-adjacent,apet-plugin-discrete,"
                   "dense-mask,bitfit,adapter,prompt,ft")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    variants = args.variants.split(",")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 29000, (args.batch, args.seq), generator=g)
    batch = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
    labels = torch.randint(0, 2, (args.batch,), generator=g).to(device)
    models, steps, info = {}, {}, {}
    for v in variants:
        model = build(v, args.model, bf16=args.precision == "bf16").to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01) if params else None
        models[v], steps[v] = model, step_fn(model, v, batch, labels, opt, bf16=args.precision == "bf16")
        for _ in range(args.warmup):
            steps[v]()
        state_bytes = sum(t.numel() * t.element_size() for s in (opt.state.values() if opt else [])
                          for t in s.values() if torch.is_tensor(t))
        info[v] = {"trainable_params": sum(p.numel() for p in params), "optimizer_state_bytes": state_bytes}
    times = {v: [] for v in variants}
    for _ in range(args.reps):  # round-robin: noise lands on every variant alike
        for v in variants:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            steps[v]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[v].append(time.perf_counter() - t)
    med = {v: statistics.median(ts) for v, ts in times.items()}
    rows = []
    for v in variants:
        row = {"variant": v, "median_ms": 1000 * med[v], **info[v],
               "x_floor": med[v] / med["floor"] if "floor" in med else None,
               "x_peft_lora": med[v] / med["peft-lora"] if "peft-lora" in med else None,
               "x_ft": med[v] / med["ft"] if "ft" in med else None}
        rows.append(row)
    meta = {"model": args.model, "batch": args.batch, "seq": args.seq, "reps": args.reps, "threads": args.threads,
            "precision": args.precision,
            "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "load_average": os.getloadavg()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"step_time_{Path(args.model).name}_{device.type}" + ("_bf16" if args.precision == "bf16" else "")
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"# Training-step time: {args.model}, batch {args.batch} x seq {args.seq}, {meta['device']}, "
             f"{args.threads} threads, {args.precision}, median of {args.reps}", "",
             "| variant | trainable | optimizer state | median ms | x floor | x peft LoRA | x FT |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        fmt = lambda x: f"{x:.3f}" if x is not None else "-"
        lines.append(f"| {r['variant']} | {r['trainable_params']:,} | {r['optimizer_state_bytes']:,} B | {r['median_ms']:.1f} | "
                     f"{fmt(r['x_floor'])} | {fmt(r['x_peft_lora'])} | {fmt(r['x_ft'])} |")
    fp32_file = out / f"step_time_{Path(args.model).name}_{device.type}.json"
    if args.precision == "bf16" and fp32_file.is_file():  # the absolute gain, against the fp32 table's run
        fp32 = {r["variant"]: r["median_ms"] for r in json.loads(fp32_file.read_text())["rows"]}
        lines += ["", "bf16 speed-up over the fp32 table (separate runs, same machine):", "",
                  "| variant | fp32 ms | bf16 ms | speed-up |", "|---|---:|---:|---:|"]
        lines += [f"| {r['variant']} | {fp32[r['variant']]:.1f} | {r['median_ms']:.1f} | {fp32[r['variant']] / r['median_ms']:.2f}x |"
                  for r in rows if r["variant"] in fp32]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
