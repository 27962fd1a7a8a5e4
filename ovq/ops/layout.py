"""The kernels' layout at the op's boundary, one pass each way.

The scan kernels read head-first float32 rows ``[B*H, P + T, W]`` (``P`` rows of the state's buffered tokens
first) and the caller has ``[B, T, H, W]`` in its own dtype. In PyTorch the conversion is a transpose, a cast,
an L2 norm and a division on the way in, a cast and transpose on the way out, and their autograd mirror in
the backward: at T = 64K on an H200 these small passes took ~10 ms of a 54 ms fwd+bwd (session 14's
profile, docs/kernels.md). Here each direction is one kernel that reads and writes every element once:

- :func:`to_head_first`: the caller's rows into head-first float32, unit-normalized or not (q, k; v; the
  output's gradient, together with the softmax backward's row term ``delta = dO . O``);
- :func:`from_head_first`: head-first float32 rows back into ``[B, T, H, W]`` in the caller's dtype (the
  output), through the L2 norm's backward where asked (the gradients of q and k).

The normalization is :func:`ovq.ops.utils.l2norm`'s, ``x / max(||x||, eps)``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import L2NORM_EPS

ROW_ELEMENTS = 4096  # elements per program: rows of up to 64 wide, 64 rows at a time


@triton.jit
def _tile(T, H, P, W, BT: tl.constexpr, BW: tl.constexpr):
    """This program's tile (grid: row blocks, b * H + h): b, h, its rows t of the caller's [B, T, H, W] and columns w,
    their masks, and the same rows' indices head-first (after P lead rows)."""
    bh = tl.program_id(1)
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    w = tl.arange(0, BW)
    tmask = t < T
    return bh // H, bh % H, t, w, tmask, tmask[:, None] & (w < W)[None, :], bh * (P + T) + P + t


@triton.jit
def to_head_first_kernel(x_ptr, sxb, sxt, sxh, y_ptr, norm_ptr, o_ptr, delta_ptr, T, H, P, W, eps,
                         NORMALIZE: tl.constexpr, DELTA: tl.constexpr, BT: tl.constexpr, BW: tl.constexpr):
    """x [B, T, H, W] (strides sxb, sxt, sxh; unit stride along W) -> rows P.. of y [B*H, P+T, W] float32, divided
    by max(||x||, eps) with NORMALIZE (the norms ||x|| into norm [B*H, P+T]); with DELTA also delta = y . o per
    row (o laid out like y)."""
    b, h, t, w, tmask, mask, rows = _tile(T, H, P, W, BT, BW)
    x = tl.load(x_ptr + b * sxb + h * sxh + t[:, None] * sxt + w[None, :], mask=mask, other=0.0).to(tl.float32)
    if NORMALIZE:
        norm = tl.sqrt(tl.sum(x * x, axis=1))
        x = x / tl.maximum(norm, eps)[:, None]
        tl.store(norm_ptr + rows, norm, mask=tmask)
    tl.store(y_ptr + rows[:, None] * W + w[None, :], x, mask=mask)
    if DELTA:
        o = tl.load(o_ptr + rows[:, None] * W + w[None, :], mask=mask, other=0.0)
        tl.store(delta_ptr + rows, tl.sum(x * o, axis=1), mask=tmask)


@triton.jit
def from_head_first_kernel(y_ptr, u_ptr, norm_ptr, out_ptr, sob, sot, soh, T, H, P, W, eps,
                           L2NORM_GRAD: tl.constexpr, BT: tl.constexpr, BW: tl.constexpr):
    """Rows P.. of y [B*H, P+T, W] float32 -> out [B, T, H, W] (strides sob, sot, soh; unit stride along W; out's
    dtype). With L2NORM_GRAD, y is the gradient w.r.t. u = x / max(||x||, eps) (u laid out like y, ||x|| in
    norm) and out gets the gradient w.r.t. x: (y - u (u . y)) / ||x||, or y / eps where the norm was clamped."""
    b, h, t, w, tmask, mask, rows = _tile(T, H, P, W, BT, BW)
    y = tl.load(y_ptr + rows[:, None] * W + w[None, :], mask=mask, other=0.0)
    if L2NORM_GRAD:
        u = tl.load(u_ptr + rows[:, None] * W + w[None, :], mask=mask, other=0.0)
        norm = tl.load(norm_ptr + rows, mask=tmask, other=1.0)
        proj = tl.where(norm >= eps, tl.sum(u * y, axis=1), 0.0)  # a clamped norm is a constant: no projection
        y = (y - u * proj[:, None]) / tl.maximum(norm, eps)[:, None]
    tl.store(out_ptr + b * sob + h * soh + t[:, None] * sot + w[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


def _grid_and_tile(t: int, bh: int, w: int) -> tuple[tuple[int, int], int, int]:
    bw = max(16, triton.next_power_of_2(w))
    bt = max(1, ROW_ELEMENTS // bw)
    return (triton.cdiv(t, bt), bh), bt, bw


def to_head_first(x: torch.Tensor, lead: torch.Tensor | int, normalize: bool, o: torch.Tensor | None = None):
    """``x`` [B, T, H, W] -> ``(y, norm, delta)``: y [B*H, P + T, W] float32, whose first P rows per (b, h) are
    ``lead`` [B, H, P, W] (or, for an int P, zeros) and the rest x's rows, unit-normalized if ``normalize`` (norm
    [B*H, P + T] holds their norms, else None; the lead rows' are not set); with ``o`` (laid out like y) also
    delta [B*H, P + T] = y . o per row, else None."""
    b, t, h, w = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    p = lead if isinstance(lead, int) else lead.shape[2]
    y = torch.empty(b * h, p + t, w, device=x.device, dtype=torch.float32)
    norm = torch.empty(b * h, p + t, device=x.device, dtype=torch.float32) if normalize else None
    delta = torch.empty(b * h, p + t, device=x.device, dtype=torch.float32) if o is not None else None
    if p:
        y[:, :p] = 0 if isinstance(lead, int) else lead.reshape(b * h, p, w)
        if delta is not None:
            delta[:, :p] = (y[:, :p] * o[:, :p]).sum(-1)
    if t and b * h:
        grid, bt, bw = _grid_and_tile(t, b * h, w)
        unused = y  # stands in for the pointers a variant does not use
        to_head_first_kernel[grid](x, x.stride(0), x.stride(1), x.stride(2), y, unused if norm is None else norm,
                                   unused if o is None else o, unused if delta is None else delta, t, h, p, w,
                                   L2NORM_EPS, NORMALIZE=normalize, DELTA=o is not None, BT=bt, BW=bw)
    return y, norm, delta


def from_head_first(y: torch.Tensor, batch: int, heads: int, lead: int, dtype: torch.dtype,
                    unit: torch.Tensor | None = None, norm: torch.Tensor | None = None) -> torch.Tensor:
    """Rows ``lead``.. of ``y`` [B*H, P + T, W] float32 (B = ``batch``, H = ``heads``) -> a contiguous [B, T, H, W]
    tensor of ``dtype``. With ``unit`` and ``norm`` (as :func:`to_head_first` returned them for x), y is a gradient
    w.r.t. the unit rows and the result the gradient w.r.t. x."""
    bh, total, w = y.shape
    h, t = heads, total - lead
    out = torch.empty(batch, t, h, w, device=y.device, dtype=dtype)
    if t and bh:
        grid, bt, bw = _grid_and_tile(t, bh, w)
        l2norm_grad = unit is not None
        from_head_first_kernel[grid](y, unit if l2norm_grad else y, norm if l2norm_grad else y, out, out.stride(0),
                                     out.stride(1), out.stride(2), t, h, lead, w, L2NORM_EPS,
                                     L2NORM_GRAD=l2norm_grad, BT=bt, BW=bw)
    return out
