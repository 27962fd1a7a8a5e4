"""Triton read for decoding: one query per (sequence, head) against the dictionary and the token buffer.

The decode step's hot path is the read (the write runs once per chunk of L tokens). The PyTorch read
re-normalizes every centroid and launches a handful of kernels per layer and token; this reads the
state's sums in place, flash-decoding style:

- ``decode_partial_kernel``, grid (B·H, S): split s streams its share of the active centroids in blocks,
  computes ``beta·<q, sum_k/‖sum_k‖> + log count`` (or the fixed codebook's directions for VQ) and keeps
  an online softmax (running max, sum of weights, weighted sum of the centroid means sum_v/count);
- ``decode_combine_kernel``, grid (B·H,): merges the S partial softmaxes with the buffered tokens' scores
  (the current token is always among them, so the softmax is never empty) and writes o.

It computes exactly :func:`ovq.ops.dictionary.dictionary_attention` for one query at the end of the
buffer (tests compare the two). Float32 throughout (the state's dtype).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .kernels import EPS  # the norm floor of ovq.ops.utils.l2norm, as the chunk kernels use it

NEG = tl.constexpr(-1.0e30)  # a finite "minus infinity": exp(NEG - m) is 0 and NEG - NEG is not NaN
BLOCK_N = 64


@triton.jit
def _query(q_ptr, beta_ptr, H, D, s_qb, s_qh, BLOCK_D: tl.constexpr):
    """This program's (bh, b, h), the head-dim offsets, its unit query [BLOCK_D] and its head's beta."""
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    offs_d = tl.arange(0, BLOCK_D)
    q = tl.load(q_ptr + b * s_qb + h * s_qh + offs_d, mask=offs_d < D, other=0.0)
    return bh, b, h, offs_d, q, tl.load(beta_ptr + h)


@triton.jit
def decode_partial_kernel(q_ptr, beta_ptr, k_ptr, v_ptr, c_ptr, part_ptr,
                          H, M, D, DV, blocks_per_split,
                          s_qb, s_qh, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_cb, s_ch,
                          NUM_SPLITS: tl.constexpr, NORMALIZE: tl.constexpr, COUNT_PRIOR: tl.constexpr,
                          BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    bh, b, h, offs_d, q, beta = _query(q_ptr, beta_ptr, H, D, s_qb, s_qh, BLOCK_D)
    split = tl.program_id(1)
    offs_dv = tl.arange(0, BLOCK_DV)
    m_i = tl.full((), NEG, tl.float32)
    l_i = tl.zeros((), tl.float32)
    acc = tl.zeros((BLOCK_DV,), tl.float32)
    start = split * blocks_per_split * BLOCK
    for i in range(0, blocks_per_split):
        offs_n = start + i * BLOCK + tl.arange(0, BLOCK)
        live = offs_n < M
        k = tl.load(k_ptr + b * s_kb + h * s_kh + offs_n[:, None] * s_kn + offs_d[None, :],
                    mask=live[:, None] & (offs_d[None, :] < D), other=0.0)
        dot = tl.sum(k * q[None, :], axis=1)
        if NORMALIZE:  # OVQ: the direction is the normalized key sum
            dot = dot / tl.maximum(tl.sqrt(tl.sum(k * k, axis=1)), EPS)
        count = tl.load(c_ptr + b * s_cb + h * s_ch + offs_n, mask=live, other=0.0)
        score = beta * dot
        if COUNT_PRIOR:
            score += tl.log(tl.maximum(count, 1.0))
        score = tl.where(live & (count > 0), score, NEG)  # an empty VQ code is not read
        vals = tl.load(v_ptr + b * s_vb + h * s_vh + offs_n[:, None] * s_vn + offs_dv[None, :],
                       mask=live[:, None] & (offs_dv[None, :] < DV), other=0.0)
        vals = vals / tl.maximum(count, 1.0)[:, None]
        m_new = tl.maximum(m_i, tl.max(score, axis=0))
        alpha = tl.exp(m_i - m_new)
        p = tl.where(score > NEG, tl.exp(score - m_new), 0.0)
        l_i = l_i * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p[:, None] * vals, axis=0)
        m_i = m_new
    base = part_ptr + (bh * NUM_SPLITS + split) * (BLOCK_DV + 2)
    tl.store(base, m_i)
    tl.store(base + 1, l_i)
    tl.store(base + 2 + offs_dv, acc)


@triton.jit
def decode_combine_kernel(q_ptr, beta_ptr, bk_ptr, bv_ptr, part_ptr, o_ptr,
                          H, P, D, DV,
                          s_qb, s_qh, s_bkb, s_bkh, s_bkn, s_bvb, s_bvh, s_bvn,
                          NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_L: tl.constexpr,
                          BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    bh, b, h, offs_d, q, beta = _query(q_ptr, beta_ptr, H, D, s_qb, s_qh, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    # the buffered (local) tokens 0 .. P-1, the last of which is the query's own
    offs_t = tl.arange(0, BLOCK_L)
    held = offs_t < P
    kb = tl.load(bk_ptr + b * s_bkb + h * s_bkh + offs_t[:, None] * s_bkn + offs_d[None, :],
                 mask=held[:, None] & (offs_d[None, :] < D), other=0.0)
    vb = tl.load(bv_ptr + b * s_bvb + h * s_bvh + offs_t[:, None] * s_bvn + offs_dv[None, :],
                 mask=held[:, None] & (offs_dv[None, :] < DV), other=0.0)
    local = tl.where(held, beta * tl.sum(kb * q[None, :], axis=1), NEG)
    # the splits' partial softmaxes over the centroids
    offs_s = tl.arange(0, BLOCK_S)
    used = offs_s < NUM_SPLITS
    rows = part_ptr + (bh * NUM_SPLITS + offs_s) * (BLOCK_DV + 2)
    m_s = tl.load(rows, mask=used, other=NEG)
    l_s = tl.load(rows + 1, mask=used, other=0.0)
    acc_s = tl.load(rows[:, None] + 2 + offs_dv[None, :], mask=used[:, None], other=0.0)
    m = tl.maximum(tl.max(local, axis=0), tl.max(m_s, axis=0))
    w_s = tl.exp(m_s - m)
    p = tl.where(held, tl.exp(local - m), 0.0)
    num = tl.sum(w_s[:, None] * acc_s, axis=0) + tl.sum(p[:, None] * vb, axis=0)
    den = tl.sum(w_s * l_s, axis=0) + tl.sum(p, axis=0)
    tl.store(o_ptr + bh * DV + offs_dv, num / den, mask=offs_dv < DV)


def _splits(bh: int, blocks: int, device: torch.device) -> int:
    """Enough splits of the centroid blocks to give every SM a program (at least one block each)."""
    if device.type != "cuda":
        return min(2, max(1, blocks))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(blocks, math.ceil(2 * sms / max(bh, 1)), 64))  # (an empty batch still asks)


def triton_decode_read(qhat: torch.Tensor, beta: torch.Tensor, keys: torch.Tensor, sums_v: torch.Tensor,
                       count: torch.Tensor, buffer_k: torch.Tensor, buffer_v: torch.Tensor, buffer_len: int,
                       *, normalize: bool, count_prior: bool) -> torch.Tensor:
    """o [B, H, 1, Dv] for the last buffered token's query.

    qhat: [B, H, 1, D] unit query; beta: broadcastable to [H] (per head); keys: [B, H, M, D] key sums
    (``normalize=True``, OVQ) or [1 or B, H, M, D] unit codes (VQ); sums_v: [B, H, M, Dv]; count: [B, H, M];
    buffer_k/v: [B, H, L, ·] with ``buffer_len`` tokens held (the query's own token last). Strided views are
    read in place (the state's active slice need not be copied).
    """
    b, h, _, d = qhat.shape
    dv, m = sums_v.shape[-1], keys.shape[-2]
    if keys.shape[-1] != d:
        raise ValueError(f"keys have head size {keys.shape[-1]}, the query {d}")
    if keys.stride(-1) != 1 or sums_v.stride(-1) != 1 or count.stride(-1) != 1:
        raise ValueError("keys, values and counts must be contiguous in their last dimension")
    q = qhat[:, :, 0].contiguous()
    beta_h = torch.as_tensor(beta, dtype=torch.float32, device=qhat.device).reshape(-1).expand(h).contiguous()
    block_d, block_dv = triton.next_power_of_2(d), triton.next_power_of_2(dv)
    blocks = max(1, math.ceil(m / BLOCK_N))
    splits = _splits(b * h, blocks, qhat.device)
    per_split = math.ceil(blocks / splits)
    part = torch.empty(b * h, splits, block_dv + 2, device=qhat.device, dtype=torch.float32)
    key_batch_stride = 0 if keys.shape[0] == 1 else keys.stride(0)
    decode_partial_kernel[(b * h, splits)](
        q, beta_h, keys, sums_v, count, part, h, m, d, dv, per_split,
        q.stride(0), q.stride(1), key_batch_stride, keys.stride(1), keys.stride(2),
        sums_v.stride(0), sums_v.stride(1), sums_v.stride(2), count.stride(0), count.stride(1),
        NUM_SPLITS=splits, NORMALIZE=normalize, COUNT_PRIOR=count_prior, BLOCK=BLOCK_N, BLOCK_D=block_d,
        BLOCK_DV=block_dv)
    o = torch.empty(b, h, 1, dv, device=qhat.device, dtype=torch.float32)
    decode_combine_kernel[(b * h,)](
        q, beta_h, buffer_k, buffer_v, part, o, h, buffer_len, d, dv,
        q.stride(0), q.stride(1), buffer_k.stride(0), buffer_k.stride(1), buffer_k.stride(2),
        buffer_v.stride(0), buffer_v.stride(1), buffer_v.stride(2),
        NUM_SPLITS=splits, BLOCK_S=triton.next_power_of_2(splits),
        BLOCK_L=triton.next_power_of_2(buffer_k.shape[-2]), BLOCK_D=block_d, BLOCK_DV=block_dv)
    return o.to(qhat.dtype)
