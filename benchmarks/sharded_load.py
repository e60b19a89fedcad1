"""Memory of an FSDP2 run that loads sharded, against one process, side by side.

A randomly initialised model of a paper config (default t5-v1_1-large: 783M parameters with
its own LM head, 3.0 GB in fp32) is saved once as safetensors with the MiniLM tokenizer. The
same short run (LoRA, batch 4, 2 steps) then goes two ways, in fp32 and in bf16, each in
fresh processes:
  one process        ``train()`` alone, strategy none;
  fsdp, N workers    N gloo processes, ``strategy="fsdp"``: every rank builds the backbone on
                     meta and reads its own rows of each weight from the file (distributed.wrap).
Each pair runs twice: keeping every activation for backward, and recomputing each block's
(``activation_checkpointing``). For each rank: the peak resident memory (VmHWM) once the
model is loaded and sharded (before any step) and over the whole run, and the frozen weights
it holds after load.

    python benchmarks/sharded_load.py [--config ../shared/configs/t5-v1_1-large] [--workers 2] [--no-recompute]

Writes benchmarks/results/sharded_load.{json,md} (a run of one precision keeps the other's saved rows).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent.parent / "shared" / "configs"


def saved_model(config_dir: Path, cache: Path) -> Path:
    """The random-weights model folder (made once; reused while it matches its config).

    transformers 5 builds every T5 tied; a config that says ``tie_word_embeddings: false``
    (t5-v1_1, mT5: their checkpoints hold their own LM head) gets its own head here, as
    the real checkpoint has it.
    """
    from safetensors import safe_open
    from torch import nn
    from transformers import AutoConfig, T5ForConditionalGeneration

    from apet_ray.models import minilm_path

    untied = json.loads((config_dir / "config.json").read_text()).get("tie_word_embeddings") is False
    folder = cache / config_dir.name
    if (folder / "model.safetensors").is_file():
        with safe_open(folder / "model.safetensors", "pt") as f:
            own_head = "lm_head.weight" in f.keys() and not torch.equal(f.get_slice("lm_head.weight")[:1],
                                                                          f.get_slice("shared.weight")[:1])
            if own_head == untied:
                return folder
    print(f"building random weights of {config_dir.name} in {folder} (once) ...", flush=True)
    config = AutoConfig.from_pretrained(config_dir)
    config.vocab_size = max(config.vocab_size, 30522)  # the borrowed WordPiece ids must fit
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config)
    if untied:  # a head of its own values: transformers ties a head equal to the embedding on load
        model.lm_head.weight = nn.Parameter(torch.randn_like(model.shared.weight) * config.d_model ** -0.5)
    model.save_pretrained(folder)
    for f in minilm_path().iterdir():
        if f.is_file() and ("token" in f.name or f.name == "vocab.txt"):
            shutil.copy(f, folder / f.name)
    return folder


def run_config(model: Path, strategy: str, precision: str, recompute: bool = False) -> dict:
    from apet_ray.delta import DeltaSpec
    from apet_ray.run import TrainConfig

    return TrainConfig(model=str(model), task="rotten_tomatoes", batch_size=4, max_steps=2, eval_every=2,
                       train_limit=16, eval_limit=8, max_input_len=64, spec=DeltaSpec.pet("lora"),
                       strategy=strategy, precision=precision, activation_checkpointing=recompute).to_dict()


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _worker(rank: int, world: int, cfg: dict, out: str, port: int) -> None:
    import apet_ray.run.loop as loop
    from apet_ray.run import TrainConfig, train

    wrap = loop.wrap

    def wrap_and_note_the_peak(*args, **kwargs):  # the peak once loaded, before any step
        model = wrap(*args, **kwargs)
        Path(f"{out}.load-peak-{rank}").write_text(str(_vm_hwm_mb()))
        return model

    loop.wrap = wrap_and_note_the_peak
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    record = train(TrainConfig.from_dict(cfg), lambda metrics, folder: None)
    if rank == 0:
        Path(out).write_text(json.dumps(record.to_dict()))
    if world > 1:
        dist.destroy_process_group()


def measure(cfg: dict, world: int) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "record.json")
        t0 = time.perf_counter()
        mp.spawn(_worker, args=(world, cfg, str(out), port), nprocs=world, join=True)
        record = json.loads(out.read_text())
        load_peaks = [round(float(Path(f"{out}.load-peak-{r}").read_text())) for r in range(world)]
    return {"load_peak_mb_per_rank": load_peaks, "workers": world, "precision": cfg["precision"],
            "recompute": cfg["activation_checkpointing"], "strategy": record["strategy"],
            "wall_s": round(time.perf_counter() - t0, 1),
            "peak_mb_per_rank": [round(x) for x in record["peak_memory_mb_per_rank"]],
            "frozen_mb_per_rank": [round(x) for x in record["frozen_mb_per_rank"]],
            "total_params": record["total_params"], "loss": record["history"][-1]["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIGS / "t5-v1_1-large")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "apet-ray-bench-models")
    parser.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both",
                        help="bf16: frozen linears and embeddings stored in bf16 (as a bf16 run does); default both")
    parser.add_argument("--no-recompute", dest="recompute", action="store_false",
                        help="leave out the pair of runs with activation checkpointing")
    args = parser.parse_args()
    model = saved_model(args.config, args.cache)
    rows = []
    for precision in (["fp32", "bf16"] if args.precision == "both" else [args.precision]):
        one = None
        for recompute in ([False, True] if args.recompute else [False]):
            pair = [measure(run_config(model, "none", precision, recompute), 1),
                    measure(run_config(model, "fsdp", precision, recompute), args.workers)]
            alike = pair[0]["peak_mb_per_rank"][0]  # one process of the same precision and recompute
            one = one or alike  # ... and one that keeps its activations, as a run does by default
            for row in pair:  # against one process's peak: its parameters are mapped file pages until touched
                row["peak_vs_one_process"] = [round(p / one, 3) for p in row["peak_mb_per_rank"]]
                row["peak_vs_one_process_alike"] = [round(p / alike, 3) for p in row["peak_mb_per_rank"]]
                row["load_peak_vs_one_process"] = [round(p / one, 3) for p in row["load_peak_mb_per_rank"]]
            rows += pair
    result = {"model": f"{args.config.name} (random weights)", "params": rows[0]["total_params"],
              "machine": _machine(), "runs": rows}
    out = HERE / "results" / "sharded_load"
    result["runs"] = sorted(_other_precisions_kept(out.with_suffix(".json"), result) + rows,
                            key=lambda row: ("fp32", "bf16").index(row["precision"]))  # stable: runs in order
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(render(result))
    print(render(result))


def _machine() -> str:
    """The CPU, its cores and whether it computes bf16 natively (elsewhere bf16 is emulated, and slow)."""
    from apet_ray.distributed import cpu_has_fast_bf16
    from apet_ray.run.provenance import device_name

    return f"{device_name('cpu')}, {os.cpu_count()} cores, {'native' if cpu_has_fast_bf16() else 'no native'} bf16"


def _other_precisions_kept(path: Path, result: dict) -> list[dict]:
    """The saved runs of the precisions not measured now (same model, same machine), so that
    ``--precision fp32`` and ``--precision bf16`` can be run apart (bf16 takes 26 minutes
    where the CPU emulates it) and the file still holds both."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if (saved.get("model"), saved.get("machine")) != (result["model"], result["machine"]):
        return []
    measured = {row["precision"] for row in result["runs"]}
    return [row for row in saved.get("runs", []) if row.get("precision") not in measured]


def render(result: dict) -> str:
    lines = [f"# Sharded load: {result['model']}, {result['params']:,} parameters, LoRA, batch 4, 2 steps", "",
             f"Machine: {result['machine']}. Ratios are to one process of the same precision that keeps its "
             "activations; \"alike\": to one process that also recomputes them.", "",
             "| run | rank | peak RSS once loaded (MB) | × one process's peak | peak RSS, whole run (MB) | × one process "
             "| × one process alike | frozen weights held (MB) | wall (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in result["runs"]:
        name = ("one process" if row["workers"] == 1 else f"fsdp, {row['workers']} workers") + f", {row['precision']}"
        name += ", recomputed activations" if row["recompute"] else ""
        for rank, (load, load_ratio, peak, ratio, alike, frozen) in enumerate(zip(
                row["load_peak_mb_per_rank"], row["load_peak_vs_one_process"], row["peak_mb_per_rank"],
                row["peak_vs_one_process"], row["peak_vs_one_process_alike"], row["frozen_mb_per_rank"])):
            lines.append(f"| {name} | {rank} | {load:,} | {load_ratio:.2f} | {peak:,} | {ratio:.2f} | {alike:.2f} "
                         f"| {frozen:,} | {row['wall_s']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
