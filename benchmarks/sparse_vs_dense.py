"""Sparse (apet-ray) vs naive dense masked delta on one MiniLM-sized linear layer.

Measures, side by side in one run, for a frozen ``nn.Linear`` of all-MiniLM-L6-v2 size
(384 -> 384 and 384 -> 1536, input 32 x 128 tokens, float32, or bf16 autocast with
``--precision bf16``):

  floor     the frozen layer alone: forward + backward to the input only, no optimizer
  discrete  apet-ray ``DeltaLinear`` + ``MaskedTensor`` with a ``masks.discrete`` mask
            (k values + k flat indices; ``delta.functional.masked_add_linear``: one product
            with W + W~, values gradient from k sampled dot products at low density, else
            gathered from the full weight gradient)
  adjacent  the same with a ``masks.adjacent`` mask (the values gradient is one product
            over the touched row block only)
  dense     the naive baseline: a full-size trainable delta D times a dense {0,1} float
            mask buffer, y = F.linear(x, W + D * mask); optimizer state and checkpoint
            are O(out * in) whatever the density

at densities 0.01 %, 0.1 %, 1 %, 10 % (k = round(density * numel), at least 1). A step
is forward + backward (the input always requires grad, as inside a network) + AdamW
(weight_decay=0.01). The variants of one (shape, density) group are timed interleaved,
round-robin, so machine noise hits them alike; each group has its own floor.

Reported per row: median step time, ratio to the floor, trainable-parameter bytes,
optimizer-state bytes after one step (nbytes of every tensor in ``optimizer.state``),
and checkpoint bytes written with ``safetensors.torch.save_file``: "ckpt" saves what the
variant needs without any convention (apet-ray: values + indices; dense: delta + mask),
"ckpt (seeded mask)" assumes the mask is regenerated from a seed (apet-ray: values only;
dense: delta only).

Before timing, the script asserts that discrete (and adjacent) and dense give the same
forward output and the same gradient on the masked entries for the same mask and values.

    python benchmarks/sparse_vs_dense.py [--reps N] [--warmup N] [--out DIR] [--device cpu|cuda] [--precision bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from apet_ray.delta import masks
from apet_ray.delta.layers import DeltaLinear
from apet_ray.delta.masked import MaskedTensor

SHAPES = [(384, 384), (384, 1536)]  # (in_features, out_features): MiniLM attention / FFN-up
DENSITIES = [1e-4, 1e-3, 1e-2, 1e-1]
BATCH, SEQ = 32, 128
LR, WEIGHT_DECAY = 1e-3, 0.01
VARIANTS = ["floor", "discrete", "adjacent", "dense"]


class DenseMaskedLinear(nn.Module):
    """What a naive implementation does: y = F.linear(x, W + D * mask), D full-size."""

    def __init__(self, base: nn.Linear, indices: torch.Tensor):
        super().__init__()
        self.base = base
        self.delta = nn.Parameter(torch.zeros_like(base.weight))
        mask = torch.zeros(base.weight.numel(), dtype=base.weight.dtype, device=base.weight.device)
        mask[indices.to(mask.device)] = 1.0
        self.register_buffer("mask", mask.view_as(base.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.base.weight + self.delta * self.mask, self.base.bias)


def frozen_linear(in_f: int, out_f: int, device: torch.device, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(in_f, out_f).to(device)
    lin.requires_grad_(False)
    return lin


def sparse_layer(base: nn.Linear, indices: torch.Tensor) -> DeltaLinear:
    layer = DeltaLinear(base)
    shape = tuple(base.weight.shape)
    layer.weight_delta = MaskedTensor(shape, indices.to(base.weight.device), torch.zeros(shape, device=base.weight.device))
    return layer


def build(variant: str, base: nn.Linear, k: int, seed: int) -> dict:
    """A module, its optimizer and the tensors each checkpoint convention would save."""
    shape = tuple(base.weight.shape)
    gen = torch.Generator().manual_seed(seed)
    if variant == "floor":
        return {"module": base, "opt": None, "ckpt": {}, "ckpt_seeded": {}}
    if variant in ("discrete", "adjacent"):
        idx = masks.MASKS[variant](shape, k, gen)
        module = sparse_layer(base, idx)
        wd = module.weight_delta
        if variant == "adjacent":
            assert wd.run_start is not None, "adjacent mask did not take the contiguous-run path"
        else:
            assert wd.run_start is None or k == 1, "discrete mask unexpectedly contiguous"
        ckpt = {"values": wd.values, "indices": wd.indices.to(torch.int32)}  # as save_deltas writes them
        seeded = {"values": wd.values}
    elif variant == "dense":
        idx = masks.discrete(shape, k, gen)
        module = DenseMaskedLinear(base, idx)
        ckpt = {"delta": module.delta, "mask": module.mask}
        seeded = {"delta": module.delta}
    else:
        raise ValueError(variant)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    return {"module": module, "opt": opt, "ckpt": ckpt, "ckpt_seeded": seeded}


BF16 = False  # --precision bf16: forward and backward under bf16 autocast (what --precision auto picks on AMX CPUs)


def step(v: dict, x: torch.Tensor, grad_out: torch.Tensor) -> None:
    opt = v["opt"]
    if opt is not None:
        opt.zero_grad(set_to_none=True)
    x.grad = None
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=BF16):
        y = v["module"](x)
    y.backward(grad_out.to(y.dtype))
    if opt is not None:
        opt.step()


def nbytes_trainable(module: nn.Module) -> int:
    return sum(p.nbytes for p in module.parameters() if p.requires_grad)


def nbytes_optimizer(opt: torch.optim.Optimizer | None) -> int:
    if opt is None:
        return 0
    return sum(t.nbytes for st in opt.state.values() for t in st.values() if torch.is_tensor(t))


def checkpoint_bytes(tensors: dict[str, torch.Tensor]) -> int:
    if not tensors:
        return 0
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "delta.safetensors")
        save_file({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, path)
        return os.path.getsize(path)


def check_correctness(base: nn.Linear, k: int, seed: int, device: torch.device) -> None:
    """Same mask, same values: sparse (discrete, adjacent) == dense, forward and gradient."""
    shape = tuple(base.weight.shape)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(4, 16, shape[1], generator=gen).to(device)
    grad_out = torch.randn(4, 16, shape[0], generator=gen).to(device)
    for kind in ("discrete", "adjacent"):
        idx = masks.MASKS[kind](shape, k, gen)
        vals = torch.randn(k, generator=gen).to(device)
        sparse = sparse_layer(base, idx)
        sparse.weight_delta.values.data.copy_(vals)
        dense = DenseMaskedLinear(base, idx)
        junk = torch.randn(shape, generator=gen).to(device)  # outside the mask: must not leak
        dense.delta.data.copy_(junk)
        dense.delta.data.view(-1)[idx.to(device)] = vals
        y_s, y_d = sparse(x), dense(x)
        # both build the same dense weight as the baseline: the forward is bit-identical
        # up to how autograd folds the matmul, so allow float32 rounding
        tol = 1e-5
        assert torch.allclose(y_s, y_d, rtol=tol, atol=tol), (
            f"{kind} vs dense forward mismatch on {shape}, k={k}: max |diff| {(y_s - y_d).abs().max():.3g}")
        y_s.backward(grad_out)
        y_d.backward(grad_out)
        g_s = sparse.weight_delta.values.grad
        g_d = dense.delta.grad.view(-1)[idx.to(device)]
        assert torch.allclose(g_s, g_d, rtol=1e-4, atol=1e-4), f"{kind} vs dense gradient mismatch on {shape}, k={k}"
        outside = dense.delta.grad.clone().view(-1)
        outside[idx.to(device)] = 0
        assert outside.abs().max() == 0, "dense baseline leaks gradient outside its mask"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_step_bytes(v: dict, x, grad_out, device) -> int | None:
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    step(v, x, grad_out)
    sync(device)
    return int(torch.cuda.max_memory_allocated(device))


def run_group(in_f: int, out_f: int, density: float, args, device: torch.device) -> list[dict]:
    numel = in_f * out_f
    k = max(1, round(density * numel))
    base = frozen_linear(in_f, out_f, device, args.seed)
    check_correctness(base, k, args.seed, device)
    gen = torch.Generator().manual_seed(args.seed + 2)
    x = torch.randn(BATCH, SEQ, in_f, generator=gen).to(device).requires_grad_(True)
    grad_out = torch.randn(BATCH, SEQ, out_f, generator=gen).to(device)
    built = {name: build(name, base, k, args.seed + 3) for name in VARIANTS}

    rows = {}
    for name, v in built.items():
        step(v, x, grad_out)  # one step: the optimizer state now exists
        rows[name] = {
            "shape": [out_f, in_f], "in_features": in_f, "out_features": out_f,
            "density": density, "k": k if name != "floor" else 0, "variant": name,
            "trainable_bytes": nbytes_trainable(v["module"]),
            "optimizer_state_bytes": nbytes_optimizer(v["opt"]),
            "checkpoint_bytes": checkpoint_bytes(v["ckpt"]),
            "checkpoint_seeded_mask_bytes": checkpoint_bytes(v["ckpt_seeded"]),
        }
        for _ in range(args.warmup):
            step(v, x, grad_out)
        rows[name]["peak_memory_bytes"] = peak_step_bytes(v, x, grad_out, device)

    times = {name: [] for name in VARIANTS}
    for rep in range(args.reps):
        order = VARIANTS[rep % len(VARIANTS):] + VARIANTS[:rep % len(VARIANTS)]
        for name in order:
            sync(device)
            t0 = time.perf_counter()
            step(built[name], x, grad_out)
            sync(device)
            times[name].append(time.perf_counter() - t0)

    floor = statistics.median(times["floor"])
    out = []
    for name in VARIANTS:
        med = statistics.median(times[name])
        ts = sorted(times[name])
        rows[name].update({
            "median_ms": med * 1e3,
            "p10_ms": ts[len(ts) // 10] * 1e3,
            "p90_ms": ts[(9 * len(ts)) // 10] * 1e3,
            "ratio_to_floor": med / floor,
        })
        out.append(rows[name])
    return out


def machine_info(device: torch.device) -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        # other processes share the cores: the ratios are interleaved, absolute ms are not
        "loadavg_start": _loadavg(),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _loadavg() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    if n == 0:
        return "0"
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def markdown(rows: list[dict], info: dict, key: dict, args) -> str:
    lines = [
        "# Sparse (apet-ray) vs naive dense masked delta, one linear layer",
        "",
        f"Input {BATCH} x {SEQ} tokens, {args.precision}, device `{info['device']}`"
        + (f" ({info['device_name']})" if "device_name" in info else "")
        + f", torch {info['torch']}, {info['torch_threads']} threads, {info['cpu_count']} CPUs, "
        f"`{info['platform']}`, load average (1/5/15 min) {info['loadavg_start']} at start, "
        f"{info['loadavg_end']} at end. Step = forward + backward (input requires grad) + AdamW "
        f"(wd={WEIGHT_DECAY}); median of {args.reps} timed steps after {args.warmup} warm-up, "
        "variants interleaved; ratio = median / median of the frozen floor of the same group.",
        "",
        "ckpt: safetensors file of what the variant needs (apet-ray: values + int32 indices; "
        "dense: delta + float32 mask). ckpt (seeded): mask regenerated from a seed "
        "(apet-ray: values only; dense: delta only).",
        "",
        "| shape (out x in) | density | k | variant | median ms | x floor | trainable | optimizer state | ckpt | ckpt (seeded) | peak mem |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['out_features']}x{r['in_features']} | {r['density'] * 100:g}% | {r['k'] or '-'} | {r['variant']} "
            f"| {r['median_ms']:.2f} | {r['ratio_to_floor']:.2f} | {fmt_bytes(r['trainable_bytes'])} "
            f"| {fmt_bytes(r['optimizer_state_bytes'])} | {fmt_bytes(r['checkpoint_bytes'])} "
            f"| {fmt_bytes(r['checkpoint_seeded_mask_bytes'])} | {fmt_bytes(r['peak_memory_bytes'])} |")
    lines += ["", "## Key ratios at 0.1 % density", "",
              "| shape | opt state dense/discrete | ckpt dense/discrete | ckpt (seeded) dense/discrete "
              "| floor ms | discrete x floor | adjacent x floor | dense x floor |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for shape, kr in key.items():
        lines.append(
            f"| {shape} | {kr['optimizer_state_dense_over_sparse']:.0f} | {kr['checkpoint_dense_over_sparse']:.0f} "
            f"| {kr['checkpoint_seeded_dense_over_sparse']:.0f} | {kr['floor_ms']:.2f} "
            f"| {kr['discrete_x_floor']:.2f} | {kr['adjacent_x_floor']:.2f} | {kr['dense_x_floor']:.2f} |")
    return "\n".join(lines) + "\n"


def key_ratios(rows: list[dict], density: float = 1e-3) -> dict:
    out = {}
    for in_f, out_f in SHAPES:
        g = {r["variant"]: r for r in rows
             if r["density"] == density and r["in_features"] == in_f and r["out_features"] == out_f}
        d, s = g["dense"], g["discrete"]
        out[f"{out_f}x{in_f}"] = {
            "density": density,
            "optimizer_state_dense_over_sparse": d["optimizer_state_bytes"] / s["optimizer_state_bytes"],
            "checkpoint_dense_over_sparse": d["checkpoint_bytes"] / s["checkpoint_bytes"],
            "checkpoint_seeded_dense_over_sparse": d["checkpoint_seeded_mask_bytes"] / s["checkpoint_seeded_mask_bytes"],
            "floor_ms": g["floor"]["median_ms"],
            **{f"{v}_x_floor": g[v]["ratio_to_floor"] for v in ("discrete", "adjacent", "dense")},
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=30, help="timed steps per variant (default 30)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps per variant first (default 5)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"),
                    help="folder for sparse_vs_dense.{json,md} (default benchmarks/results)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: autocast around each step (the correctness check stays fp32)")
    args = ap.parse_args(argv)
    global BF16
    BF16 = args.precision == "bf16"
    stem = "sparse_vs_dense" + ("_bf16" if BF16 else "")

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")

    info = machine_info(device)
    t_start = time.perf_counter()
    rows: list[dict] = []
    for in_f, out_f in SHAPES:
        for density in DENSITIES:
            group = run_group(in_f, out_f, density, args, device)
            rows += group
            print(f"  {out_f}x{in_f} density {density * 100:g}%: "
                  + ", ".join(f"{r['variant']} {r['median_ms']:.1f} ms" for r in group), file=sys.stderr)

    info["loadavg_end"] = _loadavg()
    key = key_ratios(rows)
    md = markdown(rows, info, key, args)
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "sparse_vs_dense",
        "machine": info,
        "config": {"shapes_in_out": SHAPES, "densities": DENSITIES, "batch": BATCH, "seq": SEQ,
                   "dtype": "bfloat16 autocast" if BF16 else "float32", "optimizer": "AdamW", "lr": LR, "weight_decay": WEIGHT_DECAY,
                   "reps": args.reps, "warmup": args.warmup, "seed": args.seed},
        "correctness": "asserted: discrete and adjacent == dense (forward allclose, masked grads allclose)",
        "rows": rows,
        "key_ratios_at_0.1pct": key,
        "wall_s": time.perf_counter() - t_start,
    }
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(md)
    print(f"wrote {out / f'{stem}.json'} and {out / f'{stem}.md'} "
          f"in {result['wall_s']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
