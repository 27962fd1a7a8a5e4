"""Triton decoding step: one token per (sequence, head) against the dictionary and the token buffer, one launch.

Decoding is host-bound: at H = 16, N = 4,096 the read of a full dictionary takes ~18 µs on an H200, while the
PyTorch glue around it (normalizing q and k, copying into the buffer, casting, concatenating: ~20 launches)
took ~0.4 ms per token (session 23). So one kernel does the whole step of a token, flash-decoding style:

- grid (B·H, S): split s streams its share of the active centroids in blocks, computes
  ``beta·<q̂, sum_k/‖sum_k‖> + log count`` (or the fixed codebook's directions for VQ) and keeps an online
  softmax (running max, sum of weights, weighted sum of the centroid means sum_v/count);
- it normalizes q and k itself (as ``ovq.ops.utils.l2norm``), and split 0 appends the token's unit key and its
  value to the buffer at row P (the tokens held before it);
- the splits' partial softmaxes go to a scratch buffer; the last split to arrive (an atomic counter, which it
  resets) merges them with the buffered tokens' scores and the token's own, and writes o in the input dtype.

It computes exactly :func:`ovq.ops.dictionary.dictionary_attention` for one query at the end of the buffer
(``tests/ops/test_decode.py`` holds it to the PyTorch read). Float32 throughout (the state's dtype). The chunk
write, once per L tokens, stays in PyTorch (``OnlineDictionary.write``).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .kernels import EPS  # the norm floor of ovq.ops.utils.l2norm, as the chunk kernels use it

NEG = tl.constexpr(-1.0e30)  # a finite "minus infinity": exp(NEG - m) is 0 and NEG - NEG is not NaN
BLOCK_N = 64
MAX_SPLITS = 64
SPLITS_PER_SM = 2  # programs per SM the splits aim at (B·H·S ≈ SPLITS_PER_SM · SMs)


@triton.jit
def _unit_row(ptr, offs, n):
    """A row of the caller's tensor as float32, divided by max(‖row‖, eps)."""
    x = tl.load(ptr + offs, mask=offs < n, other=0.0).to(tl.float32)
    return x / tl.maximum(tl.sqrt(tl.sum(x * x, axis=0)), EPS)


@triton.jit
def _centroid_share(q, beta, k_ptr, v_ptr, c_ptr, M, D, DV, start, num_blocks, s_kn, s_vn, offs_d, offs_dv,
                    NORMALIZE: tl.constexpr, COUNT_PRIOR: tl.constexpr, BLOCK: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Online softmax over centroids [start, start + num_blocks·BLOCK): (running max, sum of weights, sum of
    weighted value means)."""
    m_i = tl.full((), NEG, tl.float32)
    l_i = tl.zeros((), tl.float32)
    acc = tl.zeros((BLOCK_DV,), tl.float32)
    for i in range(0, num_blocks):
        offs_n = start + i * BLOCK + tl.arange(0, BLOCK)
        live = offs_n < M
        k = tl.load(k_ptr + offs_n[:, None] * s_kn + offs_d[None, :], mask=live[:, None] & (offs_d[None, :] < D),
                    other=0.0)
        dot = tl.sum(k * q[None, :], axis=1)
        if NORMALIZE:  # OVQ: the direction is the normalized key sum
            dot = dot / tl.maximum(tl.sqrt(tl.sum(k * k, axis=1)), EPS)
        count = tl.load(c_ptr + offs_n, mask=live, other=0.0)
        score = beta * dot
        if COUNT_PRIOR:
            score += tl.log(tl.maximum(count, 1.0))
        score = tl.where(live & (count > 0), score, NEG)  # an empty VQ code is not read
        vals = tl.load(v_ptr + offs_n[:, None] * s_vn + offs_dv[None, :],
                       mask=live[:, None] & (offs_dv[None, :] < DV), other=0.0)
        vals = vals / tl.maximum(count, 1.0)[:, None]
        m_new = tl.maximum(m_i, tl.max(score, axis=0))
        alpha = tl.exp(m_i - m_new)
        p = tl.where(score > NEG, tl.exp(score - m_new), 0.0)
        l_i = l_i * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p[:, None] * vals, axis=0)
        m_i = m_new
    return m_i, l_i, acc


@triton.jit(do_not_specialize=["M", "P", "blocks_per_split"])  # they change as a sequence decodes: no recompiles
def decode_step_kernel(q_ptr, k_ptr, v_ptr, beta_ptr, beta_value, keys_ptr, sv_ptr, c_ptr, bk_ptr, bv_ptr,
                       part_ptr, arrived_ptr, o_ptr,
                       H, M, P, D, DV, blocks_per_split,
                       s_qb, s_qh, s_kb, s_kh, s_vb, s_vh, s_beta,
                       s_keys_b, s_keys_h, s_keys_n, s_sv_b, s_sv_h, s_sv_n, s_c_b, s_c_h,
                       s_bk_b, s_bk_h, s_bk_n, s_bv_b, s_bv_h, s_bv_n, s_ob, s_oh,
                       NUM_SPLITS: tl.constexpr, NORMALIZE: tl.constexpr, COUNT_PRIOR: tl.constexpr,
                       BETA_IN_MEMORY: tl.constexpr, BLOCK: tl.constexpr, BLOCK_S: tl.constexpr,
                       BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    if BETA_IN_MEMORY:
        beta = tl.load(beta_ptr + h * s_beta).to(tl.float32)
    else:
        beta = beta_value
    q = _unit_row(q_ptr + b * s_qb + h * s_qh, offs_d, D)
    k_own = _unit_row(k_ptr + b * s_kb + h * s_kh, offs_d, D)  # (the token's key and value: one row each)
    v_own = tl.load(v_ptr + b * s_vb + h * s_vh + offs_dv, mask=offs_dv < DV, other=0.0).to(tl.float32)
    if split == 0:  # the token joins the buffer (read by the next steps and the chunk write)
        tl.store(bk_ptr + b * s_bk_b + h * s_bk_h + P * s_bk_n + offs_d, k_own, mask=offs_d < D)
        tl.store(bv_ptr + b * s_bv_b + h * s_bv_h + P * s_bv_n + offs_dv, v_own, mask=offs_dv < DV)
    m_i, l_i, acc = _centroid_share(q, beta, keys_ptr + b * s_keys_b + h * s_keys_h, sv_ptr + b * s_sv_b + h * s_sv_h,
                                    c_ptr + b * s_c_b + h * s_c_h, M, D, DV, split * blocks_per_split * BLOCK,
                                    blocks_per_split, s_keys_n, s_sv_n, offs_d, offs_dv, NORMALIZE, COUNT_PRIOR,
                                    BLOCK, BLOCK_DV)
    last = True
    if NUM_SPLITS > 1:
        base = part_ptr + (bh * NUM_SPLITS + split) * (BLOCK_DV + 2)
        tl.store(base, m_i)
        tl.store(base + 1, l_i)
        tl.store(base + 2 + offs_dv, acc)
        tl.debug_barrier()  # every thread's partial stored before the release below
        last = tl.atomic_add(arrived_ptr + bh, 1, sem="acq_rel", scope="gpu") == NUM_SPLITS - 1
    if last:
        if NUM_SPLITS > 1:  # the splits' partial softmaxes (loaded past L1, which other SMs' stores bypass)
            offs_s = tl.arange(0, BLOCK_S)
            used = offs_s < NUM_SPLITS
            rows = part_ptr + (bh * NUM_SPLITS + offs_s) * (BLOCK_DV + 2)
            m_s = tl.load(rows, mask=used, other=NEG, cache_modifier=".cg")
            l_s = tl.load(rows + 1, mask=used, other=0.0, cache_modifier=".cg")
            acc_s = tl.load(rows[:, None] + 2 + offs_dv[None, :], mask=used[:, None], other=0.0, cache_modifier=".cg")
            tl.store(arrived_ptr + bh, 0)  # ready for the next step
        else:
            m_s = tl.full((1,), 1.0, tl.float32) * m_i
            l_s = tl.full((1,), 1.0, tl.float32) * l_i
            acc_s = acc[None, :]
        # the tokens buffered before this one (rows 0 .. P-1), and the token itself
        offs_t = tl.arange(0, BLOCK_L)
        held = offs_t < P
        kb = tl.load(bk_ptr + b * s_bk_b + h * s_bk_h + offs_t[:, None] * s_bk_n + offs_d[None, :],
                     mask=held[:, None] & (offs_d[None, :] < D), other=0.0)
        vb = tl.load(bv_ptr + b * s_bv_b + h * s_bv_h + offs_t[:, None] * s_bv_n + offs_dv[None, :],
                     mask=held[:, None] & (offs_dv[None, :] < DV), other=0.0)
        local = tl.where(held, beta * tl.sum(kb * q[None, :], axis=1), NEG)
        own = beta * tl.sum(k_own * q, axis=0)
        m = tl.maximum(tl.maximum(tl.max(local, axis=0), tl.max(m_s, axis=0)), own)
        w_s = tl.exp(m_s - m)
        p = tl.where(held, tl.exp(local - m), 0.0)
        p_own = tl.exp(own - m)
        num = tl.sum(w_s[:, None] * acc_s, axis=0) + tl.sum(p[:, None] * vb, axis=0) + p_own * v_own
        den = tl.sum(w_s * l_s, axis=0) + tl.sum(p, axis=0) + p_own
        tl.store(o_ptr + b * s_ob + h * s_oh + offs_dv, (num / den).to(o_ptr.dtype.element_ty), mask=offs_dv < DV)


_SMS: dict = {}
_SCRATCH: dict = {}


def _splits(bh: int, blocks: int, device: torch.device) -> int:
    """Enough splits of the centroid blocks to give every SM a program (at least one block each)."""
    if device.type != "cuda":
        return min(2, max(1, blocks))
    if device not in _SMS:
        _SMS[device] = torch.cuda.get_device_properties(device).multi_processor_count
    per_sequence = math.ceil(SPLITS_PER_SM * _SMS[device] / max(bh, 1))  # (an empty batch still asks)
    return max(1, min(blocks, per_sequence, MAX_SPLITS))


def _scratch(bh: int, block_dv: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The splits' partial softmaxes and arrival counters for (device, stream, B·H, Dv), made once: the kernel
    resets its counters, so a step allocates nothing. One set per stream, so steps on two streams never share."""
    stream = torch.cuda.current_stream(device).stream_id if device.type == "cuda" else 0
    key = (device, stream, bh, block_dv)
    if key not in _SCRATCH:
        _SCRATCH[key] = (torch.empty(bh, MAX_SPLITS, block_dv + 2, device=device, dtype=torch.float32),
                         torch.zeros(bh, device=device, dtype=torch.int32))
    return _SCRATCH[key]


class TritonStepRead:
    """The decoding step's read for :func:`ovq.ops.scan.step_scan`, one launch a token.

    q, k: the caller's ``[B, T, H, D]``, v: ``[B, T, H, Dv]`` (any float dtype, last dim contiguous or not);
    beta: a checked float or ``[H]`` / 0-dim tensor; ``state``'s buffer takes each token's unit key and value.
    ``read(i, p, dictionary)`` reads token i at buffer row p; ``output()`` is o ``[B, T, H, Dv]`` in q's dtype.
    """

    def __init__(self, q, k, v, beta, state, count_prior: bool):
        # the kernel reads a token's rows with unit stride (once per call, not per token)
        q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
        self.q, self.k, self.v, self.state, self.count_prior = q, k, v, state, count_prior
        b, _, h, d = q.shape
        self.bh, self.h, self.d, self.dv = b * h, h, d, v.shape[-1]
        self.block_d, self.block_dv = triton.next_power_of_2(self.d), triton.next_power_of_2(self.dv)
        self.block_l = triton.next_power_of_2(state.buffer_k.shape[-2])
        self.beta_in_memory = isinstance(beta, torch.Tensor)  # (else a float, passed by value)
        if self.beta_in_memory:
            self.beta_ptr, self.beta_value, self.s_beta = beta, 0.0, (beta.stride(0) if beta.dim() else 0)
        else:
            self.beta_ptr, self.beta_value, self.s_beta = q, float(beta), 0  # (a pointer the kernel never reads)
        self.o = torch.empty(*q.shape[:3], self.dv, device=q.device, dtype=q.dtype)

    def __call__(self, i: int, p: int, dictionary) -> None:
        keys, sums_v, count, normalize = dictionary.stored_terms()
        m = keys.shape[-2]
        if keys.shape[-1] != self.d:
            raise ValueError(f"keys have head size {keys.shape[-1]}, the query {self.d}")
        if keys.stride(-1) != 1 or sums_v.stride(-1) != 1 or count.stride(-1) != 1:
            raise ValueError("keys, values and counts must be contiguous in their last dimension")
        blocks = max(1, math.ceil(m / BLOCK_N))
        splits = _splits(self.bh, blocks, self.q.device)
        part, arrived = _scratch(self.bh, self.block_dv, self.q.device)
        q, k, v, o, st = self.q[:, i], self.k[:, i], self.v[:, i], self.o[:, i], self.state
        bk, bv = st.buffer_k, st.buffer_v
        decode_step_kernel[(self.bh, splits)](
            q, k, v, self.beta_ptr, self.beta_value, keys, sums_v, count, bk, bv, part, arrived, o,
            self.h, m, p, self.d, self.dv, math.ceil(blocks / splits),
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), self.s_beta,
            0 if keys.shape[0] == 1 else keys.stride(0), keys.stride(1), keys.stride(2),
            sums_v.stride(0), sums_v.stride(1), sums_v.stride(2), count.stride(0), count.stride(1),
            bk.stride(0), bk.stride(1), bk.stride(2), bv.stride(0), bv.stride(1), bv.stride(2),
            o.stride(0), o.stride(1),
            NUM_SPLITS=splits, NORMALIZE=normalize, COUNT_PRIOR=self.count_prior,
            BETA_IN_MEMORY=self.beta_in_memory,
            BLOCK=BLOCK_N, BLOCK_S=triton.next_power_of_2(splits), BLOCK_L=self.block_l, BLOCK_D=self.block_d,
            BLOCK_DV=self.block_dv)

    def output(self) -> torch.Tensor:
        return self.o
