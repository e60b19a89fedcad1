"""The GPU check: FSDP2 with bf16 mixed precision on CUDA/NCCL, through apet-ray's own
delta engine and strategy code, on BERT-base and T5-base architectures (random weights).

One process, one GPU, a 1-rank NCCL group: the FSDP2 code path (fully_shard per block,
MixedPrecisionPolicy(bf16), sharded deltas, gathered checkpoints) runs for real; scaling
to N GPUs is the same code under Ray Train. For each model and method it trains a few
steps on random token ids and records step time, tokens/s, peak memory, that the loss is
finite and falls, and that the frozen weights are bit-identical afterwards.

    python benchmarks/gpu_check.py --out benchmarks/results
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
    args = p.parse_args()
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


def _bert(config):
    from transformers import AutoModel
    return AutoModel.from_config(config, add_pooling_layer=False)


def _t5(config):
    from transformers import T5ForConditionalGeneration
    return T5ForConditionalGeneration(config)


if __name__ == "__main__":
    main()
