"""Add on a frozen linear weight as one autograd Function: ``y = F.linear(x, W + W~, b)``.

Why this exists: through plain autograd the Add either (discrete) built ``W + dense(W~)``
and let backward form the full out x in weight gradient only to gather k entries of it,
or (adjacent) ran a second product on the touched rows and concatenated the outputs,
copying the whole output in forward and again in backward -- slower than the dense
baseline it replaces. Here forward is one ``F.linear`` with the summed weight; backward
recomputes ``W + W~`` (a weight-sized add, instead of holding one weight-sized tensor per
layer until backward) and computes the values gradient only where the mask is:

  adjacent  one product over the touched row block, ``g[..., r0:r1]^T @ x``, then a slice
  discrete  at low density the k sampled dot products ``<g[:, row_j], x[:, col_j]>``,
            otherwise the full ``g^T @ x`` gathered at the indices

Gradients are computed in the incoming gradient's dtype (bf16 under autocast or FSDP2
mixed precision) and returned in each input's own dtype. ``W`` and ``b`` are frozen in
apet-ray and get no gradient unless autograd asks for one.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

# Discrete masks at or below this density (k / numel) get their values gradient as k
# sampled dot products instead of from the full weight gradient. Both cost O(tokens), so
# only the density decides. Measured on CPU (2 threads, 4096 tokens, 384x384 and
# 1536x384, whole forward + backward relative to the frozen layer): sampled vs full
# 1.18 vs 1.63 at 0.01 %, 1.2-1.35 vs 1.65-1.7 at 0.1 %, 1.45 vs 1.6 at 0.2 %, 1.85 vs 1.7
# at 0.5 %. Not measured on GPU, where the dense product is relatively cheaper.
SAMPLED_MAX_DENSITY = 2e-3
# Elements of one (tokens x chunk) gathered block in the sampled path: bounds its memory.
_SAMPLED_CHUNK_ELEMENTS = 1 << 22


def summed_weight(weight: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, run_start: int | None) -> torch.Tensor:
    """``W + dense(values)`` as one new weight-sized tensor in W's dtype (W is untouched).

    Bit-identical to ``W + scatter(zeros, indices, values)``: entries outside the mask are
    copied, not added to, so a zero delta gives back W exactly.
    """
    w = weight.clone(memory_format=torch.contiguous_format)
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


def _sampled_dots(g2: torch.Tensor, x2: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``(g2^T @ x2)[rows, cols]`` without the full product, in chunks of the k entries."""
    step = max(1, _SAMPLED_CHUNK_ELEMENTS // max(1, g2.shape[0]))
    parts = [(g2.index_select(1, rows[s:s + step]) * x2.index_select(1, cols[s:s + step])).sum(0)
             for s in range(0, rows.numel(), step)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


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
            full = None
            if need_w or (need_v and run_start is None and k > SAMPLED_MAX_DENSITY * weight.numel()):
                full = g2.t().mm(x2)
            if need_w:
                gw = full.to(ctx.weight_dtype)
            if need_v:
                if full is not None:
                    gv = full.view(-1)[indices]
                elif run_start is not None:  # adjacent: the touched rows only
                    r0 = run_start // in_f
                    r1 = -(-(run_start + k) // in_f)
                    block = g2[:, r0:r1].t().mm(x2)
                    offset = run_start - r0 * in_f
                    gv = block.view(-1)[offset:offset + k]
                else:  # sparse discrete: k dot products over the tokens
                    rows = torch.div(indices, in_f, rounding_mode="floor")
                    gv = _sampled_dots(g2, x2, rows, indices - rows * in_f)
                gv = gv.to(values.dtype)
        return gx, gw, gb, gv, None, None


def masked_add_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, values: torch.Tensor,
                      indices: torch.Tensor, run_start: int | None = None) -> torch.Tensor:
    """``F.linear(x, W + W~, bias)`` where W~ holds ``values`` at the flat ``indices`` of W.

    ``run_start``: the first flat index when the indices are one contiguous run (as
    ``MaskedTensor.run_start``), else None.
    """
    return MaskedAddLinear.apply(x, weight, bias, values, indices, run_start)
