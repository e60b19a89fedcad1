"""Add on a frozen linear weight as one autograd Function: ``y = F.linear(x, W + W~, b)``.

Why this exists: through plain autograd the Add either (discrete) built ``W + dense(W~)``
and let backward form the full out x in weight gradient only to gather k entries of it,
or (adjacent) ran a second product on the touched rows and concatenated the outputs,
copying the whole output in forward and again in backward -- slower than the dense
baseline it replaces. Here forward is one ``F.linear`` with the summed weight; backward
recomputes ``W + W~`` (a weight-sized add, instead of holding one weight-sized tensor per
layer until backward) and computes the values gradient only where the mask is:

  adjacent  one product over the touched row block, ``g[..., r0:r1]^T @ x``, then a slice
  discrete  the k sampled dot products ``<g[:, row_j], x[:, col_j]>``: on CPU by the
            compiled kernel of ``sampled_kernel`` (``csrc/sampled_grad.cpp``, built on first
            use) up to 10 % density (3 % in bf16); where it cannot be built, or on another
            device, gathered columns for a few entries, ``torch.sparse.sampled_addmm`` for
            more, or the full ``g^T @ x`` gathered at the indices -- see ``values_grad_path``;
            on a GPU by the Triton kernel of ``sampled_triton`` where the gathers would run

Gradients are computed in the incoming gradient's dtype (bf16 under autocast or FSDP2
mixed precision) and returned in each input's own dtype. ``W`` and ``b`` are frozen in
apet-ray and get no gradient unless autograd asks for one.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import torch
import torch.nn.functional as F

from apet_ray.delta import sampled_kernel, sampled_triton

# How a discrete mask's values gradient is formed (``values_grad_path``), as measured on
# this project's CPU (2 cores, AVX-512 + AMX; 4,096 tokens; MiniLM's 384x384 and 384x1536
# weights; docs/benchmarks.md section 3):
#   gather  k dot products of gathered columns: no fixed cost, each entry gathers two
#           strided columns; wins up to about 0.2-0.4 % density at 1 and 2 threads (at
#           0.2 %: 1.5 vs 3.9 ms on 384x384, 13 vs 17 ms on 384x1536, 2 threads), loses
#           fast above (52 vs 17 ms at 0.4 % on 384x1536); in bf16 each gather costs ~4x more
#   sddmm   torch.sparse.sampled_addmm over the mask as CSR: a fixed cost (about 3.5 ms on
#           384x384, 15 ms on 384x1536; 12 ms with both operands made contiguous first)
#           that does not shrink with threads, then k x tokens. (torch.compile of the
#           gathered dot products was slower still: 52 ms at 0.7 % on 384x1536.)
#           With one thread it beats the dense product up to a few percent (at 0.7 %: 5.1
#           vs 7.4 ms, 22 vs 36 ms); with two the dense product has halved and it never
#           wins (4.0 vs 3.9 ms, 18.6 vs 17.0 ms at 0.7 %) -- in the whole MiniLM step
#           add-discrete at LoRA's count took 1.38x the floor on it against 1.27x dense
#   full    the dense g^T @ x gathered at the indices: everywhere else, and in bf16 on CPU,
#           where AMX makes the dense product 4x cheaper and sampled_addmm has no bf16 kernel
#   kernel  the compiled sampled kernel (sampled_kernel.py), wherever it builds: it reads dY
#           and X once, tile by tile, and does k x tokens multiply-adds, so it beats all
#           three above from the lowest density on -- fp32, one thread, 384x384 / 1536x384:
#           0.3 / 1.4 ms at 0.05 % (gather 0.4 / 1.8, sddmm ~4 / ~12, dense 11 / 45), 2.1 /
#           8.1 ms at 5 % -- until the dense product's better use of the core wins back its
#           (out x in) / k times more work: in fp32 (and fp64) past 20 % (5.5 vs 11 ms,
#           28 vs 45 ms at 20 %), so it stops at 10 %, with a 2-3x margin; in bf16 the dense
#           product is about 4x cheaper and the crossover fell between 5 % (2.6 vs 3.2 ms,
#           9.0 vs 12) and 10 % (4.1 vs 3.2), so it stops at 3 %. (Measured with other jobs
#           on the 2 cores, minimum of 7: two-thread figures were noise; it splits the tokens
#           over the threads, as the dense product does.) Where it cannot build, the rules
#           above apply as they were measured.
# On CUDA nothing is measured yet and the first rule stays: up to 0.2 % the entries' own dot
# products, by the Triton kernel (sampled_triton.py) where Triton imports -- it reads the
# same operands as the gathers without materialising a (tokens x k) block -- else by the
# gathers; above 0.2 % the dense product on the GPU's matrix units.
KERNEL_MAX_DENSITY = 0.10
KERNEL_MAX_DENSITY_LOW_PRECISION = 0.03  # bf16 / fp16 gradients
GATHER_MAX_DENSITY = 2e-3
GATHER_MAX_ENTRIES_LOW_PRECISION = 32  # bf16 / fp16 gradients
SDDMM_MAX_DENSITY = 0.04  # and only with one intra-op thread
CUDA_GATHER_MAX_DENSITY = 2e-3
# Elements of one (tokens x chunk) gathered block in the gather path: bounds its memory.
_SAMPLED_CHUNK_ELEMENTS = 1 << 22


def values_grad_path(k: int, numel: int, dtype: torch.dtype, device_type: str, threads: int | None = None,
                     kernel: bool = False) -> str:
    """"kernel", "triton", "gather", "sddmm" or "full": how backward forms the gradient of k scattered
    values of a weight of ``numel`` entries, from gradients in ``dtype`` on ``device_type``,
    with ``threads`` intra-op threads (default: torch's setting). ``kernel``: the indices
    allow a sampled kernel (sorted, no graph of the gradient wanted); whether it is built
    is asked -- and on the first ask, built -- only where it would be chosen."""
    if device_type != "cpu":
        if k > CUDA_GATHER_MAX_DENSITY * numel:
            return "full"
        fp64 = dtype == torch.float64  # the Triton kernel sums in fp32
        return "triton" if kernel and not fp64 and sampled_triton.available(device_type) else "gather"
    low_precision = dtype not in (torch.float32, torch.float64)
    kernel_max = KERNEL_MAX_DENSITY_LOW_PRECISION if low_precision else KERNEL_MAX_DENSITY
    if kernel and k <= kernel_max * numel and sampled_kernel.available():
        return "kernel"
    if dtype not in (torch.float32, torch.float64):  # bf16 / fp16: sampled_addmm has no CPU kernel
        return "gather" if k <= GATHER_MAX_ENTRIES_LOW_PRECISION else "full"
    if k <= math.ceil(GATHER_MAX_DENSITY * numel):  # a budget split by largest remainder rounds up
        return "gather"
    threads = torch.get_num_threads() if threads is None else threads
    if threads == 1 and k <= SDDMM_MAX_DENSITY * numel:
        return "sddmm"
    return "full"


def summed_weight(weight: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, run_start: int | None) -> torch.Tensor:
    """``W + dense(values)`` as one new weight-sized tensor (W is untouched), in the wider
    of the two dtypes: a bf16-stored W gets its fp32 delta added in fp32, so a small
    update is not rounded away before the product's own cast.

    Bit-identical to ``W + scatter(zeros, indices, values)``: entries outside the mask are
    copied, not added to, so a zero delta gives back W exactly.
    """
    w = weight.to(torch.promote_types(weight.dtype, values.dtype), memory_format=torch.contiguous_format, copy=True)
    flat = w.view(-1)
    v = values.to(w.dtype)
    if run_start is not None:
        flat[run_start:run_start + v.numel()].add_(v)
    else:
        flat.index_add_(0, indices, v)
    return w


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    except (RuntimeError, ValueError):  # a device type autocast does not know
        pass
    return None


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    # what autocast itself casts: floating tensors other than float64
    if t is None or not t.is_floating_point() or t.dtype == torch.float64:
        return t
    return t.to(dtype)


def _gathered_dots(g2: torch.Tensor, x2: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``(g2^T @ x2)[rows, cols]`` without the full product, in chunks of the k entries."""
    step = max(1, _SAMPLED_CHUNK_ELEMENTS // max(1, g2.shape[0]))
    parts = [(g2.index_select(1, rows[s:s + step]) * x2.index_select(1, cols[s:s + step])).sum(0)
             for s in range(0, rows.numel(), step)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _sddmm(g2: torch.Tensor, x2: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, out_f: int, in_f: int) -> torch.Tensor:
    """``(g2^T @ x2)[rows, cols]`` as one sampled dense-dense product; rows/cols in the
    row-major order of sorted flat indices (what every mask function returns), which is
    CSR's order."""
    dtype = g2.dtype if g2.dtype in (torch.float32, torch.float64) else torch.float32
    crow = torch.zeros(out_f + 1, dtype=torch.int64, device=g2.device)
    crow[1:] = torch.bincount(rows, minlength=out_f).cumsum(0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": used here for this one kernel only
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(crow, cols, torch.zeros(rows.numel(), dtype=dtype, device=g2.device),
                                          (out_f, in_f), check_invariants=False)
    return torch.sparse.sampled_addmm(pattern, g2.t().to(dtype), x2.to(dtype), beta=0.0).values()


def _sorted(indices: torch.Tensor) -> bool:
    # the mask functions' contract; a hand-made mask out of order takes the gather path
    # (or, where the kernel would have run, the PyTorch path its density picks)
    return indices.numel() < 2 or bool((indices[1:] > indices[:-1]).all())


class MaskedAddLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, values, indices, run_start):
        ctx.run_start = run_start
        ctx.x_dtype, ctx.weight_dtype = x.dtype, weight.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        w = summed_weight(weight, values, indices, run_start)
        dtype = _autocast_dtype(x.device.type)
        if dtype is not None:  # cast as autocast would, so the saved x is the cast one
            x, w, bias = _cast(x, dtype), _cast(w, dtype), _cast(bias, dtype)
        elif w.dtype != x.dtype and w.dtype != torch.float64:  # bf16 x, bf16 W, fp32 values: compute as x is
            w = w.to(x.dtype)
        y = F.linear(x, w, bias)
        if y._is_view():  # linear's 3-D + bias path returns addmm(...).view(...); a view
            # output of a Function cannot be modified in place, so drop the view tracking
            y = torch.ops.aten._unsafe_view(y, y.shape)
        ctx.save_for_backward(x, weight, values, indices)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, values, indices = ctx.saved_tensors
        need_x, need_w, need_b, need_v = ctx.needs_input_grad[:4]
        gx = gw = gb = gv = None
        dtype = grad.dtype
        run_start = ctx.run_start
        device_type = grad.device.type
        with torch.autocast(device_type, enabled=False) if _autocast_dtype(device_type) else contextlib.nullcontext():
            if need_x:
                w = summed_weight(weight, values, indices, run_start).to(dtype)
                gx = grad.matmul(w).to(ctx.x_dtype)
                del w
            out_f, in_f = weight.shape
            g2 = grad.reshape(-1, out_f)
            if need_b:
                gb = g2.sum(0).to(ctx.bias_dtype)
            if need_w or need_v:
                x2 = x.reshape(-1, in_f).to(dtype)
            k = values.numel()
            # the kernel walks the mask in CSR order, and its output has no graph for a
            # double backward (create_graph=True) to follow
            kernel = (need_v and not need_w and run_start is None and not torch.is_grad_enabled()
                      and _sorted(indices))
            # positional: tests replace values_grad_path with a lambda *_
            path = "adjacent" if run_start is not None else values_grad_path(k, weight.numel(), dtype, device_type,
                                                                              None, kernel)
            full = None
            if need_w or (need_v and path == "full"):
                full = g2.t().mm(x2)
            if need_w:
                gw = full.to(ctx.weight_dtype)
            if need_v:
                if full is not None:
                    gv = full.view(-1)[indices]
                elif path == "adjacent":  # the touched rows only
                    r0 = run_start // in_f
                    r1 = -(-(run_start + k) // in_f)
                    block = g2[:, r0:r1].t().mm(x2)
                    offset = run_start - r0 * in_f
                    gv = block.view(-1)[offset:offset + k]
                elif path == "kernel" and kernel and sampled_kernel.available():
                    gv = sampled_kernel.sampled_dots(g2, x2, indices)  # fp32 for bf16 gradients
                elif path == "triton" and kernel:
                    gv = sampled_triton.sampled_dots(g2, x2, indices)
                else:  # discrete: k dot products over the tokens
                    rows = torch.div(indices, in_f, rounding_mode="floor")
                    cols = indices - rows * in_f
                    if path == "sddmm" and _sorted(indices):
                        gv = _sddmm(g2, x2, rows, cols, out_f, in_f)
                    else:
                        gv = _gathered_dots(g2, x2, rows, cols)
                gv = gv.to(values.dtype)
        return gx, gw, gb, gv, None, None


def masked_add_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, values: torch.Tensor,
                      indices: torch.Tensor, run_start: int | None = None) -> torch.Tensor:
    """``F.linear(x, W + W~, bias)`` where W~ holds ``values`` at the flat ``indices`` of W.

    ``run_start``: the first flat index when the indices are one contiguous run (as
    ``MaskedTensor.run_start``), else None.
    """
    return MaskedAddLinear.apply(x, weight, bias, values, indices, run_start)
