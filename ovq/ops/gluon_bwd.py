"""The dictionary backward in Gluon, with each slice's G_v in shared memory (experimental, opt-in).

``ovq_bwd_dict_kernel`` (Triton) adds every chunk's read gradient to the float32 accumulators G_k and G_v of every
active slot with atomic adds, a block of 64 slots at a time. On an H200 those adds are ~43% of the block step, and
their cost is not linear in their bytes: in ``python -m ovq.bench.block_step`` (session 17) the step takes 4.45 us
per (block, chunk) pair with both G added atomically, 3.02 with G_v kept in shared memory and G_k still added, 2.83
with both kept. Triton cannot index shared memory; Gluon can. This kernel is ``ovq_bwd_dict_kernel`` with:

- each program's G_v (its slice's slots, at most ``SLICE_BLOCKS`` x 64 rows of float32, 128 KB at 8 blocks) in
  shared memory for the whole reverse scan, read from and written back to ``gv`` at the ends;
- the merged tokens' G_v rows gathered from the block's G_v tile inside the block loop, before the chunk's
  gradient is added to it (the Triton kernel reads them from ``gv`` before the loop);
- the read's and the gradient's products issued asynchronously (warpgroup MMAs, as ``bench.block_step``'s);
- each slot's logit offset (log2 count, or 0 without the count prior; -inf when empty) kept in a float32 buffer
  ``off`` [BH, P], written when a count changes (at the start, and for the slots a chunk's rewind touches), and loaded
  straight into the products' layout, where the Triton kernel adds ``off`` rows through a product. (Taken from the
  counts in the block loop, its log2 over that layout's replicated columns was ~400 of ~1,570 instructions per
  block, compiled for sm_90.)

Scope: D = DV = 64, chunk size 128, 16-bit inputs (bf16 or fp16 products), not ``detach_state`` (no G then), and at
most ``MAX_SLICE_BLOCKS`` blocks of slots per slice (at 64K with N = 4,096: 8 slices of 512 slots). Elsewhere the
Triton kernel runs, and on GPUs other than Hopper (sm_90). Off by default (``OVQ_GLUON_BWD=1`` turns it on): on an
H200 (session 18) it is exact but slower, fwd+bwd 54.1 against 45.0 ms at 64K; its in-loop gather costs 6.0 ms and
G_k's reload, projection and atomic adds 8.7 ms (``python -m ovq.bench.gluon_bwd_parts``; ``docs/kernels.md``).
"""

from __future__ import annotations

import collections

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma, warpgroup_mma_wait

# Blocks of 64 slots whose G_v fits in shared memory beside the operands (8 x 64 x 64 float32 = 128 KB; the
# operands take ~80 KB; an H200 allows 232,448 B per program)
MAX_SLICE_BLOCKS = 8
NUM_WARPS = 8
LOG2E = gl.constexpr(1.4426950408889634)
LN2 = gl.constexpr(0.6931471805599453)
EPS = gl.constexpr(1e-6)


def applies(d: int, dv: int, chunk_size: int, read_precision: str, detach: bool, slice_blocks: int) -> bool:
    """Whether this kernel serves the configuration (see the module's scope)."""
    return (d == 64 and dv == 64 and chunk_size == 128 and read_precision in ("bf16", "fp16") and not detach
            and 1 <= slice_blocks <= MAX_SLICE_BLOCKS)


BlockStepLayouts = collections.namedtuple("BlockStepLayouts",
                                          "blocked read dq grad chunk_op block_op scores_op g")


@gluon.constexpr_function
def block_step_layouts(W, BL, BN, BD, op_ty):
    """The layouts of a (chunk, block) step's tiles at W warps, BL tokens, BN slots and BD columns: ``blocked`` for
    global loads and stores; the warpgroup accumulators of the read ([BL, BN]), of dq ([BL, BD]) and of G ([BN, BD]);
    the shared-memory operands (``op_ty``) of a chunk ([BL, BD]), a block ([BN, BD]) and p or ds ([BL, BN]); ``g`` for
    float32 G kept in shared memory (a swizzle of pairs timed no faster in bench.block_step). Kernels bind the fields
    to constexpr names (``acc_l: gl.constexpr = lay.read``) to pass them to jit functions."""
    return BlockStepLayouts(
        blocked=gl.BlockedLayout([1, 8], [4, 8], [W, 1], [1, 0]),
        read=gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[W, 1], instr_shape=[16, BN, 16]),
        dq=gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[W, 1], instr_shape=[16, BD, 16]),
        grad=gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, W // 4], instr_shape=[16, BD // (W // 4), 16]),
        chunk_op=gl.NVMMASharedLayout.get_default_for([BL, BD], op_ty),
        block_op=gl.NVMMASharedLayout.get_default_for([BN, BD], op_ty),
        scores_op=gl.NVMMASharedLayout.get_default_for([BL, BN], op_ty),
        g=gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))


@gluon.jit
def stage_operands(a_s, b_s, a, b):
    """Store two operand tiles into shared memory once every warp is done with the last ones, and make them visible
    to the warpgroup products (the async proxy)."""
    gl.thread_barrier()
    a_s.store(a)
    b_s.store(b)
    fence_async_shared()
    gl.thread_barrier()


@gluon.jit
def read_products(q_s, do_s, mu_s, muv_s, zero):
    """Issue the read's two products, q mu^T and dO muv^T, without waiting for them."""
    return (warpgroup_mma(q_s, mu_s.permute([1, 0]), zero, is_async=True),
            warpgroup_mma(do_s, muv_s.permute([1, 0]), zero, is_async=True))


@gluon.jit
def store_scores(logits, dp, off, lse2, delta, p_s, ds_s):
    """Wait for the read's two products, then store p = exp2(logits + off - lse2) and ds = p (dp - delta) as the
    gradient products' operands (a slot with offset -inf, or a row with lse2 = +inf, gets p = 0)."""
    logits, dp = warpgroup_mma_wait(0, deps=[logits, dp])
    p = gl.exp2(logits + off[None, :] - lse2[:, None])
    ds = p * (dp - delta[:, None])
    p_s.store(p.to(p_s.dtype))
    ds_s.store(ds.to(ds_s.dtype))
    fence_async_shared()
    gl.thread_barrier()


@gluon.jit
def gradient_products(q_s, do_s, mu_s, p_s, ds_s, dq, gk, gv):
    """dq + ds mu, G_k + ds^T q and G_v + p^T dO, the three in flight together."""
    dq = warpgroup_mma(ds_s, mu_s, dq, is_async=True)
    gk = warpgroup_mma(ds_s.permute([1, 0]), q_s, gk, is_async=True)
    gv = warpgroup_mma(p_s.permute([1, 0]), do_s, gv, is_async=True)
    return warpgroup_mma_wait(0, deps=[dq, gk, gv])


@gluon.jit
def _slots_in_slice(m, s, NB: gl.constexpr):
    """How many of the active slots n < m belong to slice s (slot n is slice n % NB's)."""
    return gl.where(m > s, (m - s + NB - 1) // NB, 0)


@gluon.jit
def _offsets(cnt, COUNT_PRIOR: gl.constexpr):
    """Each slot's base-2 logit offset from its count: log2 count (0 without the prior), -inf for an empty slot."""
    if COUNT_PRIOR:
        return gl.where(cnt > 0.5, gl.log2(gl.maximum(cnt, 1.0)), float("-inf"))
    else:
        return gl.where(cnt > 0.5, 0.0, float("-inf"))


@gluon.jit
def _gather_own(gv_tile, own_block, local, tok_rows):
    """The rows of ``gv_tile`` ([BN, D], one block's G_v) that the chunk's tokens in this block take (``local``: a
    token's row in the block; ``own_block``: whether the token's slot is in it), 0 for the other tokens: [BL, D]."""
    idx = gl.where(own_block, local, 0)
    rows = gl.gather(gv_tile, gl.zeros_like(tok_rows) + idx[:, None], 0)
    return gl.where(own_block[:, None], rows, 0.0)


@gluon.jit
def ovq_bwd_dict_gluon_kernel(
    q_ptr, k_ptr, v_ptr, beta_ptr, do_ptr, lse_ptr, delta_ptr, z_ptr, sched_ptr,
    sk_ptr, sv_ptr, cnt_ptr, cb_ptr, gk_ptr, gv_ptr, off_ptr,
    dq_ptr, dk_ptr, dv_ptr, dbeta_ptr,
    T, N, H, C, P,
    D: gl.constexpr, L: gl.constexpr, BN: gl.constexpr, NB: gl.constexpr, SLICE_BLOCKS: gl.constexpr,
    COUNT_PRIOR: gl.constexpr, STATIC: gl.constexpr, FP16: gl.constexpr,
):
    """``ovq_bwd_dict_kernel`` (the same arguments, but ``off`` is float32 [BH, P], one offset per slot, written here;
    P: the padded rows per bh of sk/sv/cnt/off) with this program's G_v in shared memory: a reverse scan over chunks
    per (slice, bh)."""
    W: gl.constexpr = gl.num_warps()
    s = gl.program_id(0)
    bh = gl.program_id(1)
    h = bh % H
    beta = gl.load(beta_ptr + h)
    op_ty: gl.constexpr = gl.float16 if FP16 else gl.bfloat16  # the products' operands (the read's precision)
    lay: gl.constexpr = block_step_layouts(W, L, BN, D, op_ty)
    blocked: gl.constexpr = lay.blocked
    acc_l: gl.constexpr = lay.read
    dq_l: gl.constexpr = lay.dq
    accg_l: gl.constexpr = lay.grad
    op_l: gl.constexpr = lay.chunk_op
    blk_l: gl.constexpr = lay.block_op
    pd_l: gl.constexpr = lay.scores_op
    g_l: gl.constexpr = lay.g
    q_s = gl.allocate_shared_memory(op_ty, [L, D], op_l)
    do_s = gl.allocate_shared_memory(op_ty, [L, D], op_l)
    mu_s = gl.allocate_shared_memory(op_ty, [BN, D], blk_l)
    muv_s = gl.allocate_shared_memory(op_ty, [BN, D], blk_l)
    p_s = gl.allocate_shared_memory(op_ty, [L, BN], pd_l)
    ds_s = gl.allocate_shared_memory(op_ty, [L, BN], pd_l)
    gv_s = gl.allocate_shared_memory(gl.float32, [SLICE_BLOCKS, BN, D], g_l)

    rows = gl.arange(0, L, layout=gl.SliceLayout(1, blocked))  # a chunk's tokens, in the loads' layout
    cols = gl.arange(0, D, layout=gl.SliceLayout(0, blocked))
    rows_n = gl.arange(0, BN, layout=gl.SliceLayout(1, blocked))  # a block's slots, in the loads' layout
    acc_rows = gl.arange(0, L, layout=gl.SliceLayout(1, acc_l))  # a chunk's tokens, in the read's layout
    acc_cols = gl.arange(0, BN, layout=gl.SliceLayout(0, acc_l))  # a block's slots, in the read's layout
    g_rows = gl.arange(0, BN, layout=gl.SliceLayout(1, accg_l))  # a block's slots, in the G products' layout
    g_cols = gl.arange(0, D, layout=gl.SliceLayout(0, accg_l))
    tok_rows = gl.zeros([L, D], gl.int32, blocked)
    s_base = bh * N  # row offset of this bh's gradients (gk, gv)
    p_base = bh * P  # ... and of its padded scratch sums and counts
    cb_base = h * P * D

    # the slice's logit offsets, from the final counts (padded slots: count 0, so -inf)
    for e in gl.static_range(SLICE_BLOCKS):
        n_off = p_base + s + NB * (e * BN + rows_n)
        gl.store(off_ptr + n_off, _offsets(gl.load(cnt_ptr + n_off), COUNT_PRIOR))
    # the slice's G_v: the gradient w.r.t. the final sums on entry
    for e in gl.static_range(SLICE_BLOCKS):
        n_end = s + NB * (e * BN + g_rows)
        gv_s.index(e).store(gl.load(gv_ptr + (s_base + n_end)[:, None] * D + g_cols[None, :],
                                    mask=(n_end < N)[:, None], other=0.0))
    zero = gl.zeros([L, BN], gl.float32, acc_l)
    zero_g = gl.zeros([BN, D], gl.float32, accg_l)
    dbeta = 0.0
    for cc in range(0, C):
        c = C - 1 - cc
        t = c * L + rows
        tmask = t < T
        qk_off = (bh * T + t)[:, None] * D + cols[None, :]
        m = gl.load(sched_ptr + 2 * c)
        m_after = m + gl.load(sched_ptr + 2 * c + 1)
        # (1) tokens merged by this chunk: G_k of every later read of their centroid (G_v comes from shared memory in
        #     the block loop), then rewind the sums to the dictionary this chunk read
        z = gl.load(z_ptr + bh * T + t, mask=tmask, other=-1)
        own = (z >= 0) & ((z % NB) == s)
        zs = gl.where(own, z, 0)
        k = gl.load(k_ptr + qk_off, mask=tmask[:, None], other=0.0)
        v = gl.load(v_ptr + qk_off, mask=tmask[:, None], other=0.0)
        if not STATIC:
            gk = gl.load(gk_ptr + (s_base + zs)[:, None] * D + cols[None, :], mask=own[:, None], other=0.0,
                         cache_modifier=".cg")
            dk = gl.load(dk_ptr + qk_off, mask=own[:, None], other=0.0)
            gl.store(dk_ptr + qk_off, dk + gk, mask=own[:, None])
            gl.atomic_add(sk_ptr + (p_base + zs)[:, None] * D + cols[None, :], -k, mask=own[:, None], sem="relaxed")
        gl.atomic_add(sv_ptr + (p_base + zs)[:, None] * D + cols[None, :], -v, mask=own[:, None], sem="relaxed")
        gl.atomic_add(cnt_ptr + p_base + zs, gl.full([L], -1.0, gl.float32, gl.SliceLayout(1, blocked)), mask=own,
                      sem="relaxed")
        local = zs // NB  # the token's row in the slice
        own_blk = gl.where(own, local // BN, -1)
        local = local % BN
        gl.thread_barrier()  # every rewind issued (and G_k read) before counts are read and G_k is added to
        # the rewound slots' offsets (a slot hit twice is written twice, alike)
        cnt_z = gl.load(cnt_ptr + p_base + zs, mask=own, other=0.0, cache_modifier=".cg")
        gl.store(off_ptr + p_base + zs, _offsets(cnt_z, COUNT_PRIOR), mask=own)
        # (2) the gradient of this chunk's reads of its dictionary (stage_operands' barrier orders the offsets'
        #     stores before the block loop's loads)
        q = gl.load(q_ptr + qk_off, mask=tmask[:, None], other=0.0)
        do = gl.load(do_ptr + qk_off, mask=tmask[:, None], other=0.0)
        stage_operands(q_s, do_s, (q * (beta * LOG2E)).to(op_ty), do.to(op_ty))
        ta = c * L + acc_rows
        # a row past the sequence reads lse = +inf, so its p is exp2(-inf) = 0
        lse2 = gl.load(lse_ptr + bh * T + ta, mask=ta < T, other=float("inf")) * LOG2E
        delta = gl.load(delta_ptr + bh * T + ta, mask=ta < T, other=0.0)
        read_blocks = gl.cdiv(_slots_in_slice(m, s, NB), BN)
        all_blocks = gl.cdiv(_slots_in_slice(m_after, s, NB), BN)
        dq = gl.zeros([L, D], gl.float32, dq_l)
        gv_tok = gl.zeros([L, D], gl.float32, blocked)
        for b in range(0, read_blocks):
            n = s + NB * (b * BN + rows_n)
            if STATIC:  # unit codes
                mu = gl.load(cb_ptr + cb_base + n[:, None] * D + cols[None, :])
            else:
                sk = gl.load(sk_ptr + (p_base + n)[:, None] * D + cols[None, :], cache_modifier=".cg")
                mu = sk * (1.0 / gl.maximum(gl.sqrt(gl.sum(sk * sk, axis=1)), EPS))[:, None]
            cnt = gl.load(cnt_ptr + p_base + n, cache_modifier=".cg")
            muv = gl.load(sv_ptr + (p_base + n)[:, None] * D + cols[None, :], cache_modifier=".cg") \
                * (1.0 / gl.maximum(cnt, 1.0))[:, None]
            stage_operands(mu_s, muv_s, mu.to(op_ty), muv.to(op_ty))
            logits, dp = read_products(q_s, do_s, mu_s, muv_s, zero)
            # per slot, in the products' layouts: its logit offset, and its count (1/count, whether it holds tokens)
            off = gl.load(off_ptr + p_base + s + NB * (b * BN + acc_cols), cache_modifier=".cg")
            n_g = s + NB * (b * BN + g_rows)
            cnt_g = gl.load(cnt_ptr + p_base + n_g, cache_modifier=".cg")
            readable = cnt_g > 0.5
            gv_old = gv_s.index(b).load(accg_l)
            gv_tok += _gather_own(gv_old, own_blk == b, local, tok_rows)
            store_scores(logits, dp, off, lse2, delta, p_s, ds_s)
            dq, dmu, dsv = gradient_products(q_s, do_s, mu_s, p_s, ds_s, dq, zero_g, zero_g)
            gv_s.index(b).store(gv_old + gl.where(readable[:, None], dsv * (1.0 / gl.maximum(cnt_g, 1.0))[:, None],
                                                  0.0))
            if not STATIC:
                # the float32 direction and 1/||sum_k|| in the G products' layout (loaded again: cheaper than a
                # conversion of the [BN, D] tile through shared memory)
                sk_g = gl.load(sk_ptr + (p_base + n_g)[:, None] * D + g_cols[None, :], cache_modifier=".cg")
                inv_g = 1.0 / gl.maximum(gl.sqrt(gl.sum(sk_g * sk_g, axis=1)), EPS)
                mu_g = sk_g * inv_g[:, None]
                dmu = dmu * LN2  # q_s carries beta * log2(e)
                dsk = (dmu - mu_g * gl.sum(mu_g * dmu, axis=1)[:, None]) * inv_g[:, None]
                gl.atomic_add(gk_ptr + (s_base + n_g)[:, None] * D + g_cols[None, :], dsk, mask=readable[:, None],
                              sem="relaxed")
        # the slots opened by this chunk (not read by it): only their merged tokens' G_v
        for b in range(read_blocks, all_blocks):
            gv_tok += _gather_own(gv_s.index(b).load(accg_l), own_blk == b, local, tok_rows)
        dv = gl.load(dv_ptr + qk_off, mask=own[:, None], other=0.0)  # (DV = D)
        gl.store(dv_ptr + qk_off, dv + gv_tok, mask=own[:, None])
        if read_blocks > 0:
            # sum over slots of ds * (q . mu) = q . (sum of ds mu): dbeta (q reloaded: live through the loop it
            # would hold registers)
            dq_rows = gl.convert_layout(dq, blocked)
            q_rows = gl.load(q_ptr + qk_off, mask=tmask[:, None], other=0.0)
            dbeta += gl.sum(gl.sum(q_rows * dq_rows, axis=1), axis=0)
            gl.atomic_add(dq_ptr + qk_off, beta * dq_rows, mask=tmask[:, None], sem="relaxed")
        gl.thread_barrier()
    # the slice's G_v: the gradient w.r.t. the initial sums on exit
    for e in gl.static_range(SLICE_BLOCKS):
        n_end = s + NB * (e * BN + g_rows)
        gl.store(gv_ptr + (s_base + n_end)[:, None] * D + g_cols[None, :], gv_s.index(e).load(accg_l),
                 mask=(n_end < N)[:, None])
    gl.store(dbeta_ptr + bh * NB + s, dbeta)


def slice_blocks(capacity: int, slices: int) -> int:
    """Blocks of BLOCK_CENTROIDS slots in each slice's share of ``capacity`` slots: the backward's padded buffers hold
    whole blocks per slice (``triton_chunk.padded_capacity``)."""
    from .triton_chunk import BLOCK_CENTROIDS, padded_capacity
    return padded_capacity(capacity, slices) // (slices * BLOCK_CENTROIDS)


def launch(args: tuple, *, total: int, capacity: int, num_heads: int, chunks: int, padded: int, slices: int,
           bh: int, count_prior: bool, static: bool, fp16: bool) -> None:
    """Launch the kernel over (slices, bh) with ``args`` = ``ovq_bwd_dict_kernel``'s pointer arguments (q, k, v, beta,
    dO, lse, delta, z, schedule, sums k and v, counts, codes, G_k, G_v, offsets: float32 [bh, padded], dq, dk, dv,
    dbeta)."""
    ovq_bwd_dict_gluon_kernel[(slices, bh)](
        *args, total, capacity, num_heads, chunks, padded, D=64, L=128, BN=64, NB=slices,
        SLICE_BLOCKS=slice_blocks(capacity, slices), COUNT_PRIOR=count_prior, STATIC=static, FP16=fp16,
        num_warps=NUM_WARPS)
