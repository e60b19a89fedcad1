"""The learning-rate sweep behind the embedded default's smoke profile.

Short runs (the smoke profile's steps, batch and lengths) of each method family of the
structure ablation on the packaged MiniLM and Rotten Tomatoes, at a few learning rates;
two processes at a time, one thread each (as the study runs its trials). Prints one line
per run and writes benchmarks/results/smoke_lr_sweep.{json,md}.

    python benchmarks/smoke_lr_sweep.py                 # ~10 min on 2 cores
    python benchmarks/smoke_lr_sweep.py --steps 100 --lrs 1e-3,3e-3
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAMILIES = {  # name -> (method or APET op/distribution/match)
    "ft": ("ft",),
    "bitfit": ("bitfit",),
    "lora": ("lora",),
    "adapter": ("adapter",),
    "apet-add-discrete=bitfit": ("add", "discrete", "bitfit"),
    "apet-concat-adjacent=lora": ("concat", "adjacent", "lora"),
    "apet-plugin-discrete=adapter": ("plugin", "discrete", "adapter"),
}
DEFAULT_LRS = {"ft": "3e-5,1e-4,3e-4"}


def one(job: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from apet_ray.delta import DeltaSpec
    from apet_ray.run import TrainConfig, train

    parts = FAMILIES[job["family"]]
    spec = DeltaSpec.pet(parts[0]) if len(parts) == 1 else DeltaSpec.apet(*parts[:2], match=parts[2])
    cfg = TrainConfig(model="minilm", task="rotten_tomatoes", spec=spec, lr=job["lr"], batch_size=job["batch"],
                      max_steps=job["steps"], eval_every=job["steps"] // 2, train_limit=None, eval_limit=job["eval"],
                      max_input_len=64, workers=0)
    t0 = time.perf_counter()
    record = train(cfg, lambda metrics, checkpoint: None)
    return {**job, "scores": record.scores, "final": record.final_score, "majority": record.majority,
            "wall_s": time.perf_counter() - t0, "tokens_per_s": record.tokens_per_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--eval", type=int, default=500)
    p.add_argument("--lrs", default="1e-3,3e-3,1e-2", help="for the PET families (FT: 3e-5,1e-4,3e-4)")
    p.add_argument("--families", default=",".join(FAMILIES))
    args = p.parse_args()
    jobs = [{"family": f, "lr": float(lr), "steps": args.steps, "batch": args.batch, "eval": args.eval}
            for f in args.families.split(",") for lr in DEFAULT_LRS.get(f, args.lrs).split(",")]
    out = []
    with ProcessPoolExecutor(2) as pool:
        for r in pool.map(one, jobs):
            out.append(r)
            print(f"{r['family']:30s} lr {r['lr']:<7g} accuracy {' -> '.join(f'{s:.3f}' for s in r['scores'])}"
                  f"  (majority {r['majority']:.3f})  {r['wall_s']:.0f} s", flush=True)
    best = {}
    for r in out:
        if r["family"] not in best or r["final"] > best[r["family"]]["final"]:
            best[r["family"]] = r
    lines = ["| family | accuracy (%) at each lr | | | best lr |", "|---|---|---|---|---|"]
    for family in dict.fromkeys(r["family"] for r in out):
        rows = [r for r in out if r["family"] == family]
        lines.append(f"| {family} | " + " | ".join(f"{r['lr']:g}: {100 * r['final']:.1f}" for r in rows)
                     + f" | {best[family]['lr']:g} |")
    lines.append(f"\n{args.steps} steps, batch {args.batch}, eval on {args.eval} examples; majority class "
                 f"{100 * out[0]['majority']:.1f} %.")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "smoke_lr_sweep.json").write_text(json.dumps(out, indent=1))
    (HERE / "results" / "smoke_lr_sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
