"""The sampled-gradient kernel on a GPU, in Triton: ``sampled_dots`` for CUDA tensors.

The same product as the CPU kernel (``sampled_kernel``, ``csrc/sampled_grad.cpp``): for
the k entries of a discrete weight delta, ``g[e] = sum_t dY[t, row[e]] * X[t, col[e]]``,
never forming the (out x in) weight gradient nor a (tokens x k) gather. Both operands are
transposed once, so each entry reads two contiguous token vectors (a row of dY^T and a row
of X^T), and a program sums BLOCK_E entries over the tokens BLOCK_T at a time, in fp32.
Entries come in CSR order (sorted flat indices), so neighbouring programs read the same
rows of dY^T and the GPU's cache serves most of those loads.

Optional: Triton ships with CUDA builds of PyTorch (or ``pip install triton``). Where it
cannot be imported, or the tensors are not on a GPU, ``available()`` is False and the
callers keep PyTorch's gathered / dense paths; ``APET_RAY_SAMPLED_KERNEL=off`` holds it off
as it does the CPU kernel. ``TRITON_INTERPRET=1`` (set before Triton is imported) runs the
same kernel on CPU tensors through Triton's interpreter: that is how its parity test runs
on a machine without a GPU.
"""

from __future__ import annotations

import functools
import os
import sys

import torch

from apet_ray.delta import sampled_kernel

BLOCK_E = 32  # entries per program
BLOCK_T = 128  # tokens per loop iteration


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")


@functools.lru_cache(maxsize=1)
def _kernel():
    """The jitted kernel, defined on first use: importing apet-ray never imports Triton."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        print("apet-ray: sparse weight delta gradients on the GPU use PyTorch's gathers: Triton is not installed "
              "(pip install triton)", file=sys.stderr, flush=True)
        return None
    print(f"apet-ray: sparse weight delta gradients on the GPU use the Triton sampled kernel (Triton {triton.__version__}"
          f"{', interpreted' if interpreted() else ''})", file=sys.stderr, flush=True)

    @triton.jit
    def sampled_dots_kernel(gt_ptr, xt_ptr, rows_ptr, cols_ptr, out_ptr, k, tokens,
                            BLOCK_E: tl.constexpr, BLOCK_T: tl.constexpr):
        e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
        live = e < k
        # int64 offsets: rows x tokens passes 2^31 on large layers and long batches
        r = tl.load(rows_ptr + e, mask=live, other=0).to(tl.int64)
        c = tl.load(cols_ptr + e, mask=live, other=0).to(tl.int64)
        acc = tl.zeros((BLOCK_E,), dtype=tl.float32)
        for t0 in range(0, tokens, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            m = live[:, None] & (t[None, :] < tokens)
            a = tl.load(gt_ptr + r[:, None] * tokens + t[None, :], mask=m, other=0.0).to(tl.float32)
            b = tl.load(xt_ptr + c[:, None] * tokens + t[None, :], mask=m, other=0.0).to(tl.float32)
            acc += tl.sum(a * b, axis=1)
        tl.store(out_ptr + e, acc, mask=live)

    return triton, sampled_dots_kernel


def available(device_type: str = "cuda") -> bool:
    """The kernel can run on ``device_type`` in this process: Triton imports, the device is a
    GPU (or the interpreter runs it on the CPU), and it is not held off."""
    if sampled_kernel.mode() == "off":
        return False
    if device_type == "cuda":
        return torch.cuda.is_available() and _kernel() is not None
    return device_type == "cpu" and interpreted() and _kernel() is not None


def sampled_dots(g: torch.Tensor, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``(g^T @ x).view(-1)[indices]`` for g (T, out_f), x (T, in_f) of one floating dtype and
    int64 flat ``indices`` (any order; CSR order reads best), in fp32 for fp32 / bf16 / fp16
    inputs. fp64 stays on PyTorch's paths: the kernel sums in fp32."""
    loaded = _kernel()
    if loaded is None:
        raise RuntimeError("apet-ray: the Triton sampled kernel needs Triton (pip install triton)")
    triton, kernel = loaded
    if g.dtype == torch.float64:
        raise ValueError("the Triton sampled kernel sums in fp32: fp64 takes PyTorch's paths")
    tokens, out_f = g.shape
    in_f = x.shape[1]
    rows = torch.div(indices, in_f, rounding_mode="floor")
    cols = indices - rows * in_f
    if rows.numel() and int(rows.max()) >= out_f:
        raise IndexError(f"an index past the weight's {out_f} x {in_f} entries")
    gt, xt = g.t().contiguous(), x.t().contiguous()
    out = torch.empty(indices.numel(), dtype=torch.float32, device=g.device)
    if indices.numel():
        kernel[(triton.cdiv(indices.numel(), BLOCK_E),)](gt, xt, rows.contiguous(), cols.contiguous(), out,
                                                          indices.numel(), tokens, BLOCK_E=BLOCK_E, BLOCK_T=BLOCK_T)
    return out
