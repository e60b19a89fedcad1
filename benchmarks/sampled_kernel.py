"""The values gradient of a discrete weight delta on CPU, four ways, alone.

For one MiniLM-sized weight (out x in: 384x384, 1536x384 = FFN up, 384x1536 = FFN down) and
4,096 tokens, ``g`` = dY (tokens x out) and ``x`` = X (tokens x in) random, a sorted discrete
mask of k entries, times what ``delta.functional`` can run for ``(g^T @ x)[mask]``:

  kernel   the compiled sampled kernel (``delta.sampled_kernel.sampled_dots``)
  dense    ``g.t().mm(x).view(-1)[indices]``: the full product, then gathered
  sddmm    ``torch.sparse.sampled_addmm`` over the mask as CSR (fp32 only: no bf16 CPU kernel)
  gather   gathered columns, k dot products (``functional._gathered_dots``; only up to
           0.5 %: it grows with k and is out of contention above)

at densities 0.05 % .. 5 %, for fp32 and bf16 operands, with 1 and 2 intra-op threads.
The variants of one (shape, dtype, threads, density) group run round-robin after a warm-up,
so machine noise hits them alike; reported is the median (p10, p90) of ``--reps`` calls and
each variant's ratio to the kernel. Before timing, every variant is checked against the
dense product of the same group.

Writes ``sampled_kernel_cpu.{json,md}`` to ``--out`` (default benchmarks/results) and the
plot ``sampled_kernel.png`` to ``--img`` (default docs/img). ``--quick`` (a smoke run of
under a minute: two densities, one shape, few reps) writes to a temporary folder instead,
so its figures never land in the repository.

    python benchmarks/sampled_kernel.py [--reps 21] [--warmup 3] [--threads 1,2] [--quick]
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from apet_ray.delta import functional, sampled_kernel
from apet_ray.delta.masks import discrete

SHAPES = [(384, 384), (1536, 384), (384, 1536)]  # (out_features, in_features)
DENSITIES = [5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TOKENS = 4096
VARIANTS = ["kernel", "dense", "sddmm", "gather"]
GATHER_MAX_DENSITY = 5e-3
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    out_features: int
    in_features: int
    dtype: str
    threads: int
    density: float
    k: int
    variant: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    x_kernel: float = float("nan")  # median / the kernel's median in the same group


def variants(g: torch.Tensor, x: torch.Tensor, indices: torch.Tensor, density: float) -> dict[str, Callable[[], torch.Tensor]]:
    out_f, in_f = g.shape[1], x.shape[1]
    rows = torch.div(indices, in_f, rounding_mode="floor")
    cols = indices - rows * in_f
    fns = {
        "kernel": lambda: sampled_kernel.sampled_dots(g, x, indices),
        "dense": lambda: g.t().mm(x).view(-1)[indices],
    }
    if g.dtype == torch.float32:
        fns["sddmm"] = lambda: functional._sddmm(g, x, rows, cols, out_f, in_f)
    if density <= GATHER_MAX_DENSITY:
        fns["gather"] = lambda: functional._gathered_dots(g, x, rows, cols)
    return fns


def check(fns: dict[str, Callable[[], torch.Tensor]], dtype: torch.dtype) -> None:
    """Every variant == the dense product, within the operands' precision."""
    ref = fns["dense"]().double()
    scale = max(ref.abs().max().item(), 1e-30)
    tol = 1e-4 if dtype == torch.float32 else 3e-2  # the dense bf16 product rounds its output to bf16
    for name, fn in fns.items():
        err = (fn().double() - ref).abs().max().item()
        assert err <= tol * scale, f"{name} differs from the dense product by {err:.3g} (scale {scale:.3g})"


def time_group(fns: dict[str, Callable[[], torch.Tensor]], reps: int, warmup: int) -> dict[str, list[float]]:
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def run(shapes, densities, dtypes, threads_list, reps: int, warmup: int, seed: int) -> list[Row]:
    out: list[Row] = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        for out_f, in_f in shapes:
            gen = torch.Generator().manual_seed(seed)
            g32 = torch.randn(TOKENS, out_f, generator=gen)
            x32 = torch.randn(TOKENS, in_f, generator=gen)
            for dname in dtypes:
                dtype = DTYPES[dname]
                g, x = g32.to(dtype), x32.to(dtype)
                for density in densities:
                    k = max(1, round(density * out_f * in_f))
                    indices = discrete((out_f, in_f), k, torch.Generator().manual_seed(seed + 1))
                    fns = variants(g, x, indices, density)
                    check(fns, dtype)
                    times = time_group(fns, reps, warmup)
                    group = []
                    for name in VARIANTS:
                        if name not in times:
                            continue
                        ts = sorted(times[name])
                        group.append(Row(out_f, in_f, dname, threads, density, k, name, statistics.median(ts) * 1e3,
                                         ts[len(ts) // 10] * 1e3, ts[(9 * len(ts)) // 10] * 1e3))
                    kernel_ms = group[0].median_ms
                    for r in group:
                        r.x_kernel = r.median_ms / kernel_ms
                    out += group
                    print(f"  {out_f}x{in_f} {dname} {threads}t {density * 100:g}%: "
                          + ", ".join(f"{r.variant} {r.median_ms:.2f}" for r in group) + " ms", file=sys.stderr)
    return out


def markdown(rows: list[Row], info: dict, args) -> str:
    lines = [
        "# The values gradient of a discrete weight delta on CPU: compiled kernel vs PyTorch",
        "",
        f"(g^T @ x) at k sorted entries, {TOKENS} tokens; torch {info['torch']}, {info['cpu_count']} CPUs, "
        f"`{info['processor']}`, load average {info['loadavg_start']} at start, {info['loadavg_end']} at end. "
        f"Median (p10-p90) of {args.reps} calls after {args.warmup} warm-up, variants round-robin per group; "
        "x kernel = median / the kernel's median. sddmm: fp32 only; gather: up to "
        f"{GATHER_MAX_DENSITY * 100:g} %. {info['kernel']}",
        "",
        "| weight (out x in) | dtype | threads | density | k | kernel ms | dense ms | sddmm ms | gather ms "
        "| dense x kernel | best other x kernel |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups: dict[tuple, dict[str, Row]] = {}
    for r in rows:
        groups.setdefault((r.out_features, r.in_features, r.dtype, r.threads, r.density), {})[r.variant] = r

    def ms(g: dict[str, Row], name: str) -> str:
        r = g.get(name)
        return "n/a" if r is None else f"{r.median_ms:.2f} ({r.p10_ms:.2f}-{r.p90_ms:.2f})"

    for (out_f, in_f, dname, threads, density), g in groups.items():
        best_other = min(r.x_kernel for name, r in g.items() if name != "kernel")
        lines.append(f"| {out_f}x{in_f} | {dname} | {threads} | {density * 100:g}% | {g['kernel'].k} "
                     f"| {ms(g, 'kernel')} | {ms(g, 'dense')} | {ms(g, 'sddmm')} | {ms(g, 'gather')} "
                     f"| {g['dense'].x_kernel:.2f} | {best_other:.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path) -> None:
    from matplotlib.figure import Figure  # Agg through Figure.savefig: no pyplot state

    panels = sorted({(r.out_features, r.in_features, r.dtype) for r in rows}, key=lambda p: (list(DTYPES).index(p[2]), p[0], p[1]))
    cols = min(3, len(panels))
    nrows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.6 * cols, 3.6 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    colors = {name: f"C{i}" for i, name in enumerate(VARIANTS)}
    styles = {1: "--", 2: "-"}
    for ax, (out_f, in_f, dname) in zip(axes, panels):
        for name in VARIANTS:
            for threads in sorted({r.threads for r in rows}):
                pts = [(r.density * 100, r.median_ms) for r in rows
                       if (r.out_features, r.in_features, r.dtype, r.variant, r.threads) == (out_f, in_f, dname, name, threads)]
                if pts:
                    ax.plot(*zip(*pts), styles.get(threads, ":"), marker="o", ms=3, color=colors[name],
                            label=f"{name}, {threads} thread{'s' if threads > 1 else ''}")
        ax.set(xscale="log", yscale="log", xlabel="mask density (%)", ylabel="ms per values gradient",
               title=f"{out_f}x{in_f}, {dname}, {TOKENS} tokens")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)


def _loadavg() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=21, help="timed calls per variant and group (default 21)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls per variant first (default 3)")
    ap.add_argument("--threads", default="1,2", help="intra-op thread counts, comma-separated (default 1,2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 384x384, 0.1 and 2 %%, 3 reps, written to a temporary folder")
    ap.add_argument("--out", help="folder for sampled_kernel_cpu.{json,md} (default benchmarks/results)")
    ap.add_argument("--img", help="folder for sampled_kernel.png (default docs/img)")
    args = ap.parse_args(argv)

    shapes, densities = SHAPES, DENSITIES
    if args.quick:
        shapes, densities = SHAPES[:1], [1e-3, 2e-2]
        args.reps, args.warmup = min(args.reps, 3), min(args.warmup, 1)
        scratch = Path(tempfile.mkdtemp(prefix="apet-ray-sampled-kernel-"))
        out, img = Path(args.out or scratch), Path(args.img or scratch)
    else:
        out, img = Path(args.out or REPO / "benchmarks" / "results"), Path(args.img or REPO / "docs" / "img")
    threads_list = [int(t) for t in args.threads.split(",") if t]

    st = sampled_kernel.state()  # builds it now, outside the timings
    if not st.available:
        print(f"the sampled kernel is unavailable, nothing to compare: {st.reason}", file=sys.stderr)
        return 1
    info = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0], "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "kernel": st.describe(), "loadavg_start": _loadavg(),
    }
    t0 = time.perf_counter()
    rows = run(shapes, densities, list(DTYPES), threads_list, args.reps, args.warmup, args.seed)
    info["loadavg_end"] = _loadavg()
    md = markdown(rows, info, args)
    print(md)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "sampled_kernel",
        "machine": info,
        "config": {"shapes_out_in": shapes, "densities": densities, "tokens": TOKENS, "dtypes": list(DTYPES),
                   "threads": threads_list, "reps": args.reps, "warmup": args.warmup, "seed": args.seed,
                   "quick": args.quick},
        "correctness": "asserted: every variant == the dense product (max abs error <= 1e-4 fp32, 3e-2 bf16, x max |ref|)",
        "rows": [asdict(r) for r in rows],
        "wall_s": time.perf_counter() - t0,
    }
    (out / "sampled_kernel_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "sampled_kernel_cpu.md").write_text(md)
    plot(rows, img / "sampled_kernel.png")
    print(f"wrote {out / 'sampled_kernel_cpu.json'}, {out / 'sampled_kernel_cpu.md'} and "
          f"{img / 'sampled_kernel.png'} in {result['wall_s']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
