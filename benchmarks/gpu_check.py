"""The GPU check: FSDP2 with bf16 mixed precision on CUDA/NCCL, through apet-ray's own
delta engine and strategy code, on BERT-base and T5-base architectures (random weights).

One process, one GPU, a 1-rank NCCL group: the FSDP2 code path (fully_shard per block,
MixedPrecisionPolicy(bf16), sharded deltas, gathered checkpoints) runs for real; scaling
to N GPUs is the same code under Ray Train. For each model and method it trains a few
steps on random token ids and records step time, tokens/s, peak memory, that the loss is
finite and falls, and that the frozen weights are bit-identical afterwards.

Before that, the sampled kernel alone (``--kernel-only``: just this): the values gradient of
a discrete weight delta, ``(dY^T @ X)`` at k sorted entries, on BERT-base's weights and
4,096 tokens, three ways -- the Triton kernel (``delta.sampled_triton``), the dense product
gathered, and gathered columns (up to 0.5 %) -- at densities 0.05 % .. 5 %, fp32 and bf16,
each checked against the dense product first; median of ``--reps`` calls, variants
round-robin. ``--device cpu`` with ``TRITON_INTERPRET=1`` runs that part on the CPU through
Triton's interpreter (a smoke run: its times mean nothing).

    python benchmarks/gpu_check.py --out benchmarks/results [--kernel-only]
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
import torch.distributed as dist


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--kernel-only", action="store_true", help="only the sampled kernel's table")
    p.add_argument("--reps", type=int, default=21, help="timed calls per kernel variant")
    p.add_argument("--device", default="cuda", help="cuda; cpu only under TRITON_INTERPRET=1 (a smoke run)")
    args = p.parse_args()
    kernel_table(Path(args.out), torch.device(args.device), args.reps)
    if args.kernel_only:
        return
    assert torch.cuda.is_available(), "needs a CUDA device"
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29511")
    dist.init_process_group("nccl", rank=0, world_size=1)
    torch.cuda.set_device(0)
    from transformers import BertConfig, T5Config

    from apet_ray.delta import DeltaSpec, attach, count_backbone, count_deltas, save_deltas, trainable_state_dict
    from apet_ray.distributed import frozen_checksum, full_tensor, wrap
    from apet_ray.models import EncoderClassifier, Seq2SeqLM

    archs = {
        "bert-base (random)": lambda: EncoderClassifier(_bert(BertConfig()), 2),
        "t5-v1_1-base (random)": lambda: Seq2SeqLM(_t5(T5Config(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12,
                                                                 feed_forward_proj="gated-gelu", vocab_size=32128,
                                                                 decoder_start_token_id=0))),
    }
    specs = {"lora": DeltaSpec.pet("lora"), "apet-add-weight-discrete=lora": DeltaSpec.apet("add-weight", "discrete", match="lora"),
             "apet-add-weight-adjacent=lora": DeltaSpec.apet("add-weight", "adjacent", match="lora"),
             "apet-plugin-discrete=lora": DeltaSpec.apet("plugin", "discrete", match="lora"),
             "adapter": DeltaSpec.pet("adapter"), "ft": DeltaSpec.pet("ft")}
    rows = []
    device = torch.device("cuda", 0)
    for arch, make in archs.items():
        for name, spec in specs.items():
            torch.manual_seed(0)
            model = make()
            attach(model, spec)
            deltas, total = count_deltas(model), count_backbone(model)
            model.to(device)
            model = wrap(model, "fsdp", device, bf16=True)
            frozen = [p for p in model.parameters() if not p.requires_grad]
            before = frozen_checksum(frozen, 1)
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)
            g = torch.Generator().manual_seed(1)
            torch.cuda.reset_peak_memory_stats()
            times, losses = [], []
            for step in range(args.steps):
                ids = torch.randint(5, 30000, (args.batch, args.seq), generator=g).to(device)
                batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
                batch["labels"] = (ids[:, 0] % 2) if "bert" in arch else ids[:, :16].contiguous()
                torch.cuda.synchronize()
                t = time.perf_counter()
                loss = model(**batch)["loss"]
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
                losses.append(float(loss))
            # the checkpoint path: gather the sharded deltas to full tensors
            state = {k: full_tensor(v) for k, v in trainable_state_dict(model).items()}
            ckpt = Path(args.out) / "gpu_check_deltas.safetensors"
            save_deltas(model, ckpt, state=state)
            median = statistics.median(times[3:])
            row = {"arch": arch, "method": name, "delta_params": deltas, "total_params": total,
                   "median_step_ms": 1000 * median, "tokens_per_s": args.batch * args.seq / median,
                   "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
                   "first_loss": losses[0], "last_loss": losses[-1], "loss_finite": all(map(lambda x: x == x, losses)),
                   "frozen_unchanged": frozen_checksum(frozen, 1) == before,
                   "checkpoint_bytes": ckpt.stat().st_size}
            rows.append(row)
            print(json.dumps(row), flush=True)
            del model, opt
            torch.cuda.empty_cache()
    meta = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "batch": args.batch, "seq": args.seq, "steps": args.steps,
            "precision": "bf16 params/compute, fp32 reduce (FSDP2 MixedPrecisionPolicy)", "world_size": 1}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"# GPU check: FSDP2 + bf16 on {meta['device']} (torch {meta['torch']}, CUDA {meta['cuda']})", "",
             f"batch {args.batch} x seq {args.seq}, {args.steps} steps, median of steps 4..{args.steps}, random weights", "",
             "| arch | method | delta params | step ms | tokens/s | peak GiB | loss first→last | frozen unchanged |",
             "|---|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['method']} | {r['delta_params']:,} | {r['median_step_ms']:.1f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['peak_memory_gib']:.2f} | {r['first_loss']:.3f}→{r['last_loss']:.3f} | "
                     f"{r['frozen_unchanged']} |")
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    dist.destroy_process_group()


KERNEL_SHAPES = [(768, 768), (3072, 768), (768, 3072)]  # BERT-base: attention, FFN up, FFN down (out x in)
KERNEL_DENSITIES = [5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2]
KERNEL_TOKENS = 4096  # batch 32 x 128


def kernel_table(out: Path, device: torch.device, reps: int) -> list[dict]:
    """The Triton sampled kernel against the dense product and the gathers, alone."""
    from apet_ray.delta import functional, sampled_triton
    from apet_ray.delta.masks import discrete
    from sampled_kernel import check, time_group  # the CPU kernel's benchmark, beside this one

    if not sampled_triton.available(device.type):
        print(f"the Triton sampled kernel cannot run on {device} here (Triton missing, no GPU, or "
              "--device cpu without TRITON_INTERPRET=1): no kernel table", flush=True)
        return []
    interpreted = device.type == "cpu"
    shapes, densities = (KERNEL_SHAPES[:1], KERNEL_DENSITIES[:2]) if interpreted else (KERNEL_SHAPES, KERNEL_DENSITIES)
    tokens = 256 if interpreted else KERNEL_TOKENS

    def synced(fn):  # a GPU call is timed to its end, as the CPU benchmark's calls are
        if device.type != "cuda":
            return fn
        return lambda: (torch.cuda.synchronize(), fn(), torch.cuda.synchronize())[1]

    rows = []
    for out_f, in_f in shapes:
        gen = torch.Generator().manual_seed(0)
        g32, x32 = torch.randn(tokens, out_f, generator=gen).to(device), torch.randn(tokens, in_f, generator=gen).to(device)
        for dname, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            g, x = g32.to(dtype), x32.to(dtype)
            for density in densities:
                k = max(1, round(density * out_f * in_f))
                indices = discrete((out_f, in_f), k, torch.Generator().manual_seed(1)).to(device)
                r = torch.div(indices, in_f, rounding_mode="floor")
                c = indices - r * in_f
                fns = {"triton": lambda: sampled_triton.sampled_dots(g, x, indices),
                       "dense": lambda: g.t().mm(x).view(-1)[indices]}
                if density <= 5e-3:
                    fns["gather"] = lambda: functional._gathered_dots(g, x, r, c)
                check(fns, dtype)  # every variant == the dense product, within the operands' precision
                times = time_group({name: synced(fn) for name, fn in fns.items()}, reps, warmup=3)
                medians = {name: 1e3 * statistics.median(ts) for name, ts in times.items()}
                for name, ms in medians.items():
                    rows.append({"out_features": out_f, "in_features": in_f, "dtype": dname, "density": density, "k": k,
                                 "variant": name, "median_ms": ms, "x_triton": ms / medians["triton"]})
                print(f"  {out_f}x{in_f} {dname} {density * 100:g}%: "
                      + ", ".join(f"{n} {ms:.3f} ms" for n, ms in medians.items()), flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU, Triton's interpreter (not a timing)"
    out.mkdir(parents=True, exist_ok=True)
    stem = "gpu_sampled_kernel" if device.type == "cuda" else "gpu_sampled_kernel_interpreted"
    (out / f"{stem}.json").write_text(json.dumps({"device": name, "torch": torch.__version__, "tokens": tokens,
                                                  "reps": reps, "rows": rows}, indent=2))
    lines = [f"# The sampled kernel on {name} (torch {torch.__version__})", "",
             f"(dY^T @ X) at k sorted entries, {tokens} tokens; median of {reps} calls; x triton = median / the "
             "Triton kernel's", "", "| weight | dtype | density | k | triton ms | dense ms (x) | gather ms (x) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for key in dict.fromkeys((r["out_features"], r["in_features"], r["dtype"], r["density"]) for r in rows):
        group = {r["variant"]: r for r in rows if (r["out_features"], r["in_features"], r["dtype"], r["density"]) == key}
        gather = group.get("gather")
        lines.append(f"| {key[0]}x{key[1]} | {key[2]} | {key[3] * 100:g} % | {group['triton']['k']:,} | "
                     f"{group['triton']['median_ms']:.3f} | {group['dense']['median_ms']:.3f} ({group['dense']['x_triton']:.2f}) | "
                     + (f"{gather['median_ms']:.3f} ({gather['x_triton']:.2f})" if gather else "-") + " |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return rows


def _bert(config):
    from transformers import AutoModel
    return AutoModel.from_config(config, add_pooling_layer=False)


def _t5(config):
    from transformers import T5ForConditionalGeneration
    return T5ForConditionalGeneration(config)


if __name__ == "__main__":
    main()
