"""Triton kernels for OVQ (and the static-codebook VQ variant): forward scan and backward.

Layout: every tensor is head-first and contiguous, with the batch and head folded into one axis
``bh``: unit queries/keys ``[BH, T, D]`` (float32), values ``[BH, T, DV]``, the dictionary sums
``[BH, N, D]``, ``[BH, N, DV]`` and counts ``[BH, N]`` (float32, updated in place).

Forward (``ovq_fwd_kernel``): one scan over chunks per (bh, slice). The N centroid slots are dealt
round-robin to ``NB`` slices (slot n belongs to slice ``n % NB``, so every slice grows alike); a program
streams its slice of the dictionary once per chunk and computes, in the same pass,
  - the read: an online softmax of the chunk's queries against its centroids, and
  - the write's similarities: each key's best centroid in the slice.
With NB > 1 the programs of one bh swap these partial results through a small double-buffered
exchange and a spin barrier (they must be co-resident: the launcher keeps the grid within the SM
count). Every program then finishes the assignment (farthest-point picks, argmax including the new
centroids) identically, scatters the tokens that land in its own slice, and one program per chunk merges
the partial reads with the causal in-chunk attention and writes o. That attention (64 keys at a time)
comes from ``ovq_fwd_local_kernel``, run before the scan in parallel over chunks. No tile is L x L, so the
chunk size is bounded by the [L, D] tiles alone.

Backward: ``ovq_bwd_local_kernel`` (in-chunk attention, parallel over chunks) and
``ovq_bwd_dict_kernel`` (a reverse scan per (bh, slice) that recovers each chunk's dictionary by
subtracting the chunk's tokens from the final sums, so no per-chunk dictionary is ever stored, and
carries suffix sums G of the dictionary's gradient: a token merged at chunk c receives G[z] summed
over the reads of all later chunks).
"""

from __future__ import annotations

import triton
import triton.language as tl

EPS = tl.constexpr(1e-6)
# The kernels keep logits in base-2 units (beta * log2(e) * q.mu + log2 count) and exponentiate with exp2: on
# sm_90 tl.exp costs a multiply and a denormal fix-up around each ex2 (6 instructions per element against 2,
# a tenth of the forward's block loop). Only the stored lse is in natural units.
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
# Width of the cached forward's offset rows: a slot's logit offset as [hi, lo, 0, ...] in the read's operand type,
# added to the logits by a product with [1, 1, 0, ...] (the smallest K of a bf16 tensor-core product is 16).
# Added elementwise, the offsets must sit in the product's layout: 16 per thread, each its own 4-byte copy.
OFFW = tl.constexpr(16)
# The cached forward's rows are 2 * OFFW wide: the offset row, then [0 for an opened slot, -inf past the opened
# ones, 0, ...], added to the assignment's similarities by the same product with [1, 1, 0, ...] rows, so that
# the padded slots past the active ones lose without a mask. (One row could not hold both: its -inf would meet
# a 0 of the other product's ones, and 0 x -inf is NaN.)


@triton.jit
def _operand(x, PREC: tl.constexpr):
    """x cast to the operand type of a product at precision PREC (done once, outside hot loops)."""
    if PREC == "bf16":
        return x.to(tl.bfloat16)
    elif PREC == "fp16":
        return x.to(tl.float16)
    else:
        return x


@triton.jit
def _mm(a, b, PREC: tl.constexpr):
    """a @ b with float32 accumulation; operands already cast by ``_operand`` (or cast here)."""
    if PREC == "bf16" or PREC == "fp16":
        return tl.dot(_operand(a, PREC), _operand(b, PREC))
    else:
        return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _mm_acc(a, b, acc, PREC: tl.constexpr):
    """acc + a @ b (float32 accumulation); operands already cast by ``_operand``."""
    if PREC == "bf16" or PREC == "fp16":
        return tl.dot(a, b, acc)
    else:
        return tl.dot(a, b, acc, input_precision=PREC)


@triton.jit
def _mm_split_acc(a_hi, a_lo, b_hi, b_lo, acc):
    """acc + a @ b from split operands, the three products accumulating into one register tile."""
    return tl.dot(a_lo, b_hi, tl.dot(a_hi, b_lo, tl.dot(a_hi, b_hi, acc)))


@triton.jit
def _split(x):
    """x = hi + lo in two bfloat16 parts (hi carries 8 bits of mantissa, lo the next 8)."""
    hi = x.to(tl.bfloat16)
    return hi, (x - hi.to(tl.float32)).to(tl.bfloat16)


@triton.jit
def _mm_split(a_hi, a_lo, b_hi, b_lo):
    """a @ b from split operands: three bf16 products, ~16 bits of mantissa (float32-grade ranking)."""
    return tl.dot(a_hi, b_hi) + tl.dot(a_hi, b_lo) + tl.dot(a_lo, b_hi)


@triton.jit
def _softmax_step(row_max, row_sum, acc, logits, values, PREC: tl.constexpr):
    """One block of an online softmax: fold base-2 ``logits`` [BL, n] (-inf where masked) and their ``values``
    [n, BDV] into the running max (base 2), sum and weighted values of each row."""
    new_max = tl.maximum(row_max, tl.max(logits, axis=1))
    safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)  # a row with nothing yet stays empty
    alpha = tl.exp2(row_max - safe_max)
    p = tl.exp2(logits - safe_max[:, None])
    return new_max, row_sum * alpha + tl.sum(p, axis=1), acc * alpha[:, None] + _mm(p, values, PREC)


@triton.jit
def _slots_in_slice(m, s, NB: tl.constexpr):
    """How many of the active slots n < m belong to slice s (slot n is slice n % NB's)."""
    return tl.where(m > s, (m - s + NB - 1) // NB, 0)


@triton.jit
def _unit_rows(sk):
    """Unit directions of key sums [R, BD] (rows of zeros stay zero) and each row's 1/||sum_k||."""
    inv = 1.0 / tl.maximum(tl.sqrt(tl.sum(sk * sk, axis=1)), EPS)
    return sk * inv[:, None], inv


@triton.jit
def _padded_rows(N, NB: tl.constexpr, BN: tl.constexpr):
    """Rows per bh of a buffer padded so that each of the NB slices holds whole blocks of BN slots
    (``triton_chunk.padded_capacity`` on the host)."""
    return tl.cdiv(N, NB * BN) * NB * BN


@triton.jit
def _load_directions(sk_ptr, cb_ptr, s_base, cb_base, n, nmask, offs_d, dmask, D: tl.constexpr, STATIC: tl.constexpr):
    """Unit key directions of the slots ``n`` (codes, or normalized key sums) and 1/||sum_k|| (1 for codes)."""
    if STATIC:
        mu = tl.load(cb_ptr + cb_base + n[:, None] * D + offs_d[None, :], mask=nmask[:, None] & dmask[None, :],
                     other=0.0)
        inv = tl.full(n.shape, 1.0, tl.float32)
    else:
        sk = tl.load(sk_ptr + s_base * D + n[:, None] * D + offs_d[None, :], mask=nmask[:, None] & dmask[None, :],
                     other=0.0, cache_modifier=".cg")
        mu, inv = _unit_rows(sk)
    return mu, inv


@triton.jit
def _load_centroids(sk_ptr, sv_ptr, cnt_ptr, cb_ptr, s_base, cb_base, n, nmask, offs_d, dmask, offs_dv, dvmask,
                    D: tl.constexpr, DV: tl.constexpr, STATIC: tl.constexpr):
    """Unit key directions, value means, counts and 1/||sum_k|| for the centroid slots ``n``."""
    cnt = tl.load(cnt_ptr + s_base + n, mask=nmask, other=0.0, cache_modifier=".cg")
    mu, inv = _load_directions(sk_ptr, cb_ptr, s_base, cb_base, n, nmask, offs_d, dmask, D, STATIC)
    sv = tl.load(sv_ptr + s_base * DV + n[:, None] * DV + offs_dv[None, :], mask=nmask[:, None] & dvmask[None, :],
                 other=0.0, cache_modifier=".cg")
    muv = sv * (1.0 / tl.maximum(cnt, 1.0))[:, None]  # one reciprocal per slot: a division per element costs 3
    return mu, muv, cnt, inv


@triton.jit
def _assign_operands(x, ASSIGN_PREC: tl.constexpr):
    """An operand of the assignment's products: hi/lo bfloat16 parts for bf16x3, else x twice."""
    if ASSIGN_PREC == "bf16x3":
        return _split(x)
    else:
        return x, x


@triton.jit
def _assign_mm_acc(a_hi, a_lo, b_hi, b_lo, acc, ASSIGN_PREC: tl.constexpr):
    """acc + a @ b at the assignment's precision."""
    if ASSIGN_PREC == "bf16x3":
        return _mm_split_acc(a_hi, a_lo, b_hi, b_lo, acc)
    else:
        return _mm_acc(a_hi, b_hi, acc, ASSIGN_PREC)


@triton.jit
def _assign_mm(a_hi, a_lo, b_hi, b_lo, ASSIGN_PREC: tl.constexpr):
    """a @ b at the assignment's precision, from operands as ``_assign_operands`` gives them."""
    if ASSIGN_PREC == "bf16x3":
        return _mm_split(a_hi, a_lo, b_hi, b_lo)
    else:
        return _mm(a_hi, b_hi, ASSIGN_PREC)


@triton.jit
def _direct_sim(k_hi, k_lo, mu, ASSIGN_PREC: tl.constexpr):
    """Keys x unit directions ``mu`` [BN, BD] (computed from the sums) at the assignment's precision."""
    mu_hi, mu_lo = _assign_operands(tl.trans(mu), ASSIGN_PREC)
    return _assign_mm(k_hi, k_lo, mu_hi, mu_lo, ASSIGN_PREC)


@triton.jit
def _cached_sim(k_hi, k_lo, chi_ptr, clo_ptr, rows_d, nmask, ASSIGN_PREC: tl.constexpr):
    """Keys x unit directions read from the cached-operand buffers (hi/lo parts for bf16x3)."""
    mu_hi = tl.load(chi_ptr + rows_d, mask=nmask[:, None], other=0.0, cache_modifier=".cg")
    mu_lo = mu_hi
    if ASSIGN_PREC == "bf16x3":
        mu_lo = tl.load(clo_ptr + rows_d, mask=nmask[:, None], other=0.0, cache_modifier=".cg")
    return _assign_mm(k_hi, k_lo, tl.trans(mu_hi), tl.trans(mu_lo), ASSIGN_PREC)


@triton.jit
def _track_best(sim, nmask, r0, s, NB: tl.constexpr, best_val, best_idx, MASKED: tl.constexpr = True):
    """Fold one block's similarities (slots s + NB * (r0 + j)) into each key's best slot so far (slots outside
    ``nmask`` excluded when MASKED; else their similarities must already lose)."""
    if MASKED:
        sim = tl.where(nmask[None, :], sim, float("-inf"))
    blk_max = tl.max(sim, axis=1)
    blk_arg = tl.argmax(sim, axis=1, tie_break_left=True)
    better = blk_max > best_val  # strict: an earlier block holds lower slots, which win ties
    return tl.where(better, blk_max, best_val), tl.where(better, s + NB * (r0 + blk_arg), best_idx)


@triton.jit
def _pack_best(val, idx):
    """(similarity, slot) as one int64 that orders as "higher similarity, then lower slot", so that the best over
    the forward's slices is one atomic max: the float's bits made order-preserving as a signed int32 (negative
    floats flip their magnitude bits; -0.0 is made +0.0 first, which compares equal to it) in the high half,
    0xFFFFFFFF - slot in the low half."""
    bits = tl.where(val == 0.0, 0.0, val).to(tl.int32, bitcast=True)
    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return (key.to(tl.int64) << 32) | (0xFFFFFFFF - idx.to(tl.int64))


@triton.jit
def _unpack_best(packed):
    """The inverse of ``_pack_best``: (similarity, slot)."""
    key = (packed >> 32).to(tl.int32)
    val = tl.where(key < 0, key ^ 0x7FFFFFFF, key).to(tl.float32, bitcast=True)
    return val, (0xFFFFFFFF - (packed & 0xFFFFFFFF)).to(tl.int32)


@triton.jit
def _logit_offset(cnt, COUNT_PRIOR: tl.constexpr):
    """What a slot adds to its base-2 logits: log2 count with the count prior (else 0), -inf for an empty slot."""
    offset = tl.zeros(cnt.shape, tl.float32)
    if COUNT_PRIOR:
        offset = tl.log2(tl.maximum(cnt, 1.0))
    return tl.where(cnt > 0, offset, float("-inf"))


@triton.jit
def _store_offset_rows(ptr, rows, cnt, mask, COUNT_PRIOR: tl.constexpr, READ_PREC: tl.constexpr,
                       STRIDE: tl.constexpr = OFFW):
    """Store the slots' base-2 logit offsets (``_logit_offset`` of their counts) at ``ptr`` as OFFW-wide rows
    [hi, lo, 0, ...] in the read's precision: hi + lo keep ~16 bits; an empty slot's hi is -inf."""
    finite = tl.where(cnt > 0, _logit_offset(cnt, COUNT_PRIOR), 0.0)  # (-inf - -inf would be NaN)
    off_hi = _operand(finite, READ_PREC)
    off_lo = _operand(finite - off_hi.to(tl.float32), READ_PREC)
    off_hi = _operand(tl.where(cnt > 0, off_hi.to(tl.float32), float("-inf")), READ_PREC)
    offs_w = tl.arange(0, OFFW)
    row = tl.where(offs_w[None, :] == 0, off_hi[:, None], tl.where(offs_w[None, :] == 1, off_lo[:, None], 0.0))
    tl.store(ptr + rows[:, None] * STRIDE + offs_w[None, :], row.to(off_hi.dtype), mask=mask[:, None])


@triton.jit
def _ones_for_offsets(BL: tl.constexpr, READ_PREC: tl.constexpr):
    """[BL, OFFW] rows [1, 1, 0, ...]: their product with a block's offset rows broadcasts hi + lo over the chunk."""
    offs_w = tl.arange(0, OFFW)
    return _operand(tl.where(offs_w[None, :] < 2, 1.0, 0.0) + tl.zeros([BL, OFFW], tl.float32), READ_PREC)


@triton.jit
def _logits_with_offsets(q_op, mu_op, off_ptr, rows, mask, ones_w, READ_PREC: tl.constexpr,
                         STRIDE: tl.constexpr = OFFW):
    """Base-2 logits of a block: q_op (which carries beta * log2(e)) times the slots' directions ``mu_op``
    [BN, BD], plus their offset rows at ``off_ptr`` (``_store_offset_rows``), added by a K = OFFW product into
    the same accumulator. Loaded for an elementwise add, the offsets would sit in the product's layout: 16
    per thread, each its own 4-byte copy (a fifth of the forward's block loop on sm_90). Slots outside
    ``mask`` get -inf."""
    offs_w = tl.arange(0, OFFW)
    off_rows = tl.load(off_ptr + rows[:, None] * STRIDE + offs_w[None, :], mask=mask[:, None], other=0.0,
                       cache_modifier=".cg")
    off_rows = _operand(tl.where(mask[:, None] | (offs_w[None, :] > 0), off_rows.to(tl.float32), float("-inf")),
                        READ_PREC)
    return _mm_acc(q_op, tl.trans(mu_op), _mm(ones_w, tl.trans(off_rows), READ_PREC), READ_PREC)


@triton.jit
def _refresh_operands(sk_ptr, sv_ptr, cnt_ptr, cb_ptr, crd_ptr, chi_ptr, clo_ptr, cmv_ptr, cpr_ptr, s_base, c_base,
                      cb_base, n, nmask, offs_d, dmask, offs_dv, dvmask, D: tl.constexpr, DV: tl.constexpr,
                      BD: tl.constexpr, BDV: tl.constexpr, COUNT_PRIOR: tl.constexpr, STATIC: tl.constexpr, READ_PREC: tl.constexpr,
                      ASSIGN_PREC: tl.constexpr):
    """Store the slots ``n``'s product operands (CACHED forward): the unit key direction in the read's
    precision and in the assignment's (hi/lo bfloat16 parts for bf16x3), the value mean in the read's, and
    the logit's additive term (log2 count with the prior, else 0; -inf for an empty slot) as an OFFW-wide row
    [hi, lo, 0, ...] in the read's precision (hi + lo carries ~16 bits of it); what the uncached loop computes
    from the sums, computed once per change instead of per chunk."""
    mu, muv, cnt, inv = _load_centroids(sk_ptr, sv_ptr, cnt_ptr, cb_ptr, s_base, cb_base, n, nmask,
                                        offs_d, dmask, offs_dv, dvmask, D, DV, STATIC)
    _store_offset_rows(cpr_ptr, c_base + n, cnt, nmask, COUNT_PRIOR, READ_PREC, 2 * OFFW)
    tl.store(cpr_ptr + (c_base + n) * (2 * OFFW) + OFFW, tl.zeros(n.shape, tl.float32), mask=nmask)  # opened
    rows_d = (c_base + n)[:, None] * BD + offs_d[None, :]
    tl.store(crd_ptr + rows_d, _operand(mu, READ_PREC), mask=nmask[:, None])
    if ASSIGN_PREC == "bf16x3":
        mu_hi, mu_lo = _split(mu)
        tl.store(chi_ptr + rows_d, mu_hi, mask=nmask[:, None])
        tl.store(clo_ptr + rows_d, mu_lo, mask=nmask[:, None])
    else:
        tl.store(chi_ptr + rows_d, mu, mask=nmask[:, None])
    tl.store(cmv_ptr + (c_base + n)[:, None] * BDV + offs_dv[None, :], _operand(muv, READ_PREC), mask=nmask[:, None])


@triton.jit
def _picks_from_rows(k, sim_pick, n_new, keys, offs_l, offs_d, dmask, D: tl.constexpr, BL: tl.constexpr):
    """The chunk's farthest-point picks, each pick's similarities to every key by a key load and a reduction
    over D (float32). ``sim_pick``: each key's best similarity so far (+inf: never picked). Returns per key
    its pick order (-1: not picked), its best new centroid's similarity and that centroid's order (the first
    pick wins ties, as the lowest index does in the op's argmax). No L x L matrix: fits any chunk size."""
    order = tl.full([BL], -1, tl.int32)
    new_val = tl.full([BL], float("-inf"), tl.float32)
    new_ord = tl.zeros([BL], tl.int32)
    for i in range(0, n_new):
        j = tl.argmin(tl.where(order >= 0, float("inf"), sim_pick), axis=0, tie_break_left=True)
        order = tl.where(offs_l == j, i, order)
        k_j = tl.load(keys + j * D + offs_d, mask=dmask, other=0.0)
        row_j = tl.sum(k * k_j[None, :], axis=1)
        sim_pick = tl.maximum(sim_pick, row_j)
        new_ord = tl.where(row_j > new_val, i, new_ord)
        new_val = tl.maximum(new_val, row_j)
    return order, new_val, new_ord


@triton.jit
def _picks_from_gram(k, sim_pick, n_new, g_base, offs_l, BL: tl.constexpr, ASSIGN_PREC: tl.constexpr):
    """The same picks as ``_picks_from_rows``, reading each pick's similarities from the chunk's Gram matrix:
    one product at the assignment's precision into this program's scratch (``g_base``: BL + 3 rows of BL),
    then a row load per pick instead of a key load and a reduction over D.

    The pick state is held REP times over, a copy per warp ([REP, BL], each row of it within one warp), so a
    pick's argmin is a reduction inside a warp: over [BL] rows spread across the warps it met three barriers
    per pick. Every copy makes the same picks. The state goes in and out through the scratch rows after the
    Gram matrix (a barrier each way), which costs fewer barriers than converting it between the layouts."""
    g_hi, g_lo = _assign_operands(k, ASSIGN_PREC)  # (split again from k: keeping the read's split alive spilled)
    tl.store(g_base + offs_l[:, None] * BL + offs_l[None, :], _assign_mm(g_hi, g_lo, tl.trans(g_hi),
                                                                           tl.trans(g_lo), ASSIGN_PREC))
    REP: tl.constexpr = 8
    cols = offs_l[None, :]
    copy0 = tl.arange(0, REP)[:, None] == 0
    stage = g_base + BL * BL
    tl.store(stage + offs_l, sim_pick)
    tl.debug_barrier()  # every thread's rows stored before any is read
    sim2 = tl.load(stage + tl.zeros([REP, 1], tl.int32) + cols)
    order2 = tl.full((REP, BL), -1, tl.int32)
    new_val2 = tl.full((REP, BL), float("-inf"), tl.float32)
    new_ord2 = tl.zeros((REP, BL), tl.int32)
    for i in range(0, n_new):
        j = tl.argmin(tl.where(order2 >= 0, float("inf"), sim2), axis=1, tie_break_left=True)
        order2 = tl.where(cols == j[:, None], i, order2)
        row_j = tl.load(g_base + j[:, None] * BL + cols)
        sim2 = tl.maximum(sim2, row_j)
        new_ord2 = tl.where(row_j > new_val2, i, new_ord2)
        new_val2 = tl.maximum(new_val2, row_j)
    tl.debug_barrier()  # (every copy has read the staged row before copy 0 overwrites it)
    tl.store(stage + cols + tl.zeros([REP, 1], tl.int32), new_val2, mask=copy0)
    tl.store(stage + BL + cols + tl.zeros([REP, 1], tl.int32), order2.to(tl.float32, bitcast=True), mask=copy0)
    tl.store(stage + 2 * BL + cols + tl.zeros([REP, 1], tl.int32), new_ord2.to(tl.float32, bitcast=True),
             mask=copy0)
    tl.debug_barrier()
    new_val = tl.load(stage + offs_l)
    order = tl.load(stage + BL + offs_l).to(tl.int32, bitcast=True)
    new_ord = tl.load(stage + 2 * BL + offs_l).to(tl.int32, bitcast=True)
    return order, new_val, new_ord


@triton.jit
def _finish_rows(o_ptr, lse_ptr, bh, T, c, L: tl.constexpr, rows, row_max, row_sum, acc, offs_dv, dvmask,
                 DV: tl.constexpr):
    """Rows ``rows`` of chunk c's output: their read of the dictionary (online-softmax state, base 2) merged
    with the chunk's causal attention to its own keys, which ovq_fwd_local_kernel computed beforehand, in
    parallel over chunks (normalized output in o, base-2 lse in lse; every row has at least its own key).
    Stores the rows' output and natural-log lse."""
    t = c * L + rows
    tmask = (rows < L) & (t < T)
    v_off = (bh * T + t)[:, None] * DV + offs_dv[None, :]
    o_loc = tl.load(o_ptr + v_off, mask=tmask[:, None] & dvmask[None, :], other=0.0)
    lse_loc = tl.load(lse_ptr + bh * T + t, mask=tmask, other=0.0)
    new_max = tl.maximum(row_max, lse_loc)
    a_self = tl.exp2(row_max - new_max)  # 0 for a row the dictionary did not reach (-inf)
    a_loc = tl.exp2(lse_loc - new_max)
    row_sum = row_sum * a_self + a_loc
    acc = acc * a_self[:, None] + o_loc * a_loc[:, None]
    tl.store(o_ptr + v_off, acc / row_sum[:, None], mask=tmask[:, None] & dvmask[None, :])
    tl.store(lse_ptr + bh * T + t, (new_max + tl.log2(row_sum)) * LN2, mask=tmask)


@triton.jit
def _sum_by_group(group, x, PREC: tl.constexpr):
    """group @ x for a 0/1 matrix ``group`` in a fixed summation order (a product's) at float32 grade: x split into
    three bfloat16 parts that together hold its 24 bits of mantissa, or one float32 product ("ieee", the interpreter)."""
    if PREC == "ieee":
        return tl.dot(group, x, input_precision="ieee")
    else:
        g = group.to(tl.bfloat16)
        hi = x.to(tl.bfloat16)
        rest = x - hi.to(tl.float32)
        mid = rest.to(tl.bfloat16)
        lo = (rest - mid.to(tl.float32)).to(tl.bfloat16)
        return tl.dot(g, lo, tl.dot(g, mid, tl.dot(g, hi)))


@triton.jit
def _add_in_order(ptr, rows, x, group, lead, cols, cmask, W: tl.constexpr, PREC: tl.constexpr):
    """Add to row ``rows[i]`` of a width-W buffer the sum of ``x``'s rows grouped with token i, once per group (its
    ``lead`` token): each slot's tokens summed in a fixed order, unlike atomic adds, whose order (and so the sums'
    last bits) varies from run to run."""
    addr = ptr + rows[:, None] * W + cols[None, :]
    mask = lead[:, None] & cmask[None, :]
    tl.store(addr, tl.load(addr, mask=mask, other=0.0) + _sum_by_group(group, x, PREC), mask=mask)


@triton.jit
def ovq_fwd_kernel(
    q_ptr, k_ptr, v_ptr, beta_ptr,
    sk_ptr, sv_ptr, cnt_ptr, cb_ptr, sched_ptr,
    o_ptr, lse_ptr, z_ptr,
    xstat_ptr, xacc_ptr, xbest_ptr, bar_ptr,
    crd_ptr, chi_ptr, clo_ptr, cmv_ptr, cpr_ptr, gram_ptr,
    T, N, H, C,
    D: tl.constexpr, DV: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr, BN: tl.constexpr, NB: tl.constexpr,
    COUNT_PRIOR: tl.constexpr, STATIC: tl.constexpr, READ_PREC: tl.constexpr, ASSIGN_PREC: tl.constexpr,
    CACHED: tl.constexpr, TWO_PASS: tl.constexpr, GRAM_PICKS: tl.constexpr, MERGE_ROWS: tl.constexpr,
    ORDERED_SCATTER: tl.constexpr = False, HI_IS_READ: tl.constexpr = False,
):
    s = tl.program_id(0)
    bh = tl.program_id(1)
    h = bh % H
    beta2 = tl.load(beta_ptr + h) * LOG2E  # base-2 logits
    offs_l = tl.arange(0, BL)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    offs_n = tl.arange(0, BN)
    dmask = offs_d < D
    dvmask = offs_dv < DV
    in_chunk = offs_l < L
    s_base = bh * N  # row offset of this bh's dictionary
    # ... and of its cached operands, whose rows are padded so that every slice holds whole blocks (the rows
    # past the active slots read as unopened: zeros, and -inf in both halves of their offset rows)
    c_base = bh * _padded_rows(N, NB, BN)
    cb_base = h * N * D
    ones_w = _ones_for_offsets(BL, READ_PREC)
    offs_w = tl.arange(0, OFFW)
    if CACHED:  # operands of the slots active before the first chunk (a carried state, or the codebook)
        first_loc = _slots_in_slice(tl.load(sched_ptr), s, NB)
        for r0 in range(0, first_loc, BN):
            r = r0 + offs_n
            _refresh_operands(sk_ptr, sv_ptr, cnt_ptr, cb_ptr, crd_ptr, chi_ptr, clo_ptr, cmv_ptr, cpr_ptr, s_base,
                              c_base, cb_base, s + NB * r, r < first_loc, offs_d, dmask, offs_dv, dvmask,
                              D, DV, BD, BDV, COUNT_PRIOR, STATIC, READ_PREC, ASSIGN_PREC)
        tl.debug_barrier()
    for c in range(0, C):
        t = c * L + offs_l
        tmask = in_chunk & (t < T)
        qk_off = (bh * T + t)[:, None] * D + offs_d[None, :]
        v_off = (bh * T + t)[:, None] * DV + offs_dv[None, :]
        q = tl.load(q_ptr + qk_off, mask=tmask[:, None] & dmask[None, :], other=0.0)
        k = tl.load(k_ptr + qk_off, mask=tmask[:, None] & dmask[None, :], other=0.0)
        # Operands for the centroid loop, cast once; the float32 q, k, v are reloaded after it, which keeps
        # the loop's live registers low enough for two programs per SM. beta rides in the query operand.
        q_op = _operand(q * beta2, READ_PREC)
        if not TWO_PASS:
            k_hi, k_lo = _assign_operands(k, ASSIGN_PREC)
        m = tl.load(sched_ptr + 2 * c)
        n_new = tl.load(sched_ptr + 2 * c + 1)
        full = (T - c * L) >= L
        m_loc = _slots_in_slice(m, s, NB)

        # ---- one pass over this slice: partial read (online softmax) + best centroid per key (or two) ----
        row_max = tl.full([BL], float("-inf"), tl.float32)
        row_sum = tl.zeros([BL], tl.float32)
        acc = tl.zeros([BL, BDV], tl.float32)
        best_val = tl.full([BL], float("-inf"), tl.float32)
        best_idx = tl.zeros([BL], tl.int32)
        for r0 in range(0, m_loc, BN):
            r = r0 + offs_n
            nmask = r < m_loc
            n = s + NB * r
            if CACHED and not TWO_PASS:  # (the default) whole blocks without masks: the padded rows past the
                # active slots read as unopened. Masks took a quarter of this loop's instructions on sm_90, and
                # the log counts, taken per block, another quarter: they are stored per change.
                rows_d = (c_base + n)[:, None] * BD + offs_d[None, :]
                mu_rd = tl.load(crd_ptr + rows_d, cache_modifier=".cg")
                muv = tl.load(cmv_ptr + (c_base + n)[:, None] * BDV + offs_dv[None, :], cache_modifier=".cg")
                # (_logits_with_offsets without its masks, inline: the offset rows' address is shared with the
                # opened flags below, which a call would compute twice: 12 B of spills at L = 128)
                off_row = (c_base + n)[:, None] * (2 * OFFW) + offs_w[None, :]
                off_rows = tl.load(cpr_ptr + off_row, cache_modifier=".cg")
                logits = _mm_acc(q_op, tl.trans(mu_rd), _mm(ones_w, tl.trans(off_rows), READ_PREC), READ_PREC)
                row_max, row_sum, acc = _softmax_step(row_max, row_sum, acc, logits, muv, READ_PREC)
                if HI_IS_READ:  # (bf16 reads: the read's direction is the assignment's hi part, bit for bit)
                    mu_hi = mu_rd
                else:
                    mu_hi = tl.load(chi_ptr + rows_d, cache_modifier=".cg")
                mu_lo = mu_hi
                if ASSIGN_PREC == "bf16x3":
                    mu_lo = tl.load(clo_ptr + rows_d, cache_modifier=".cg")
                opened = tl.load(cpr_ptr + off_row + OFFW, cache_modifier=".cg")
                sim = _assign_mm_acc(k_hi, k_lo, tl.trans(mu_hi), tl.trans(mu_lo),
                                     _mm(ones_w, tl.trans(opened), READ_PREC), ASSIGN_PREC)
                best_val, best_idx = _track_best(sim, nmask, r0, s, NB, best_val, best_idx, False)
            else:
                if CACHED:  # (two passes: the similarities come in the second)
                    rows_d = (c_base + n)[:, None] * BD + offs_d[None, :]
                    mu_rd = tl.load(crd_ptr + rows_d, mask=nmask[:, None], other=0.0, cache_modifier=".cg")
                    muv = tl.load(cmv_ptr + (c_base + n)[:, None] * BDV + offs_dv[None, :], mask=nmask[:, None],
                                  other=0.0, cache_modifier=".cg")
                    logits = _logits_with_offsets(q_op, mu_rd, cpr_ptr, c_base + n, nmask, ones_w, READ_PREC,
                                                  2 * OFFW)
                else:
                    mu, muv, cnt, inv = _load_centroids(sk_ptr, sv_ptr, cnt_ptr, cb_ptr, s_base, cb_base, n, nmask,
                                                        offs_d, dmask, offs_dv, dvmask, D, DV, STATIC)
                    offset = tl.where(nmask, _logit_offset(cnt, COUNT_PRIOR), float("-inf"))
                    logits = _mm(q_op, tl.trans(_operand(mu, READ_PREC)), READ_PREC) + offset[None, :]
                row_max, row_sum, acc = _softmax_step(row_max, row_sum, acc, logits, muv, READ_PREC)
                if not TWO_PASS:
                    sim = _direct_sim(k_hi, k_lo, mu, ASSIGN_PREC)
                    best_val, best_idx = _track_best(sim, nmask, r0, s, NB, best_val, best_idx)
        if TWO_PASS:  # the write's similarities in a second pass: fewer values live in each loop
            k = tl.load(k_ptr + qk_off, mask=tmask[:, None] & dmask[None, :], other=0.0)
            k_hi, k_lo = _assign_operands(k, ASSIGN_PREC)
            for r0 in range(0, m_loc, BN):
                r = r0 + offs_n
                nmask = r < m_loc
                n = s + NB * r
                if CACHED:
                    rows_d = (c_base + n)[:, None] * BD + offs_d[None, :]
                    sim = _cached_sim(k_hi, k_lo, chi_ptr, clo_ptr, rows_d, nmask, ASSIGN_PREC)
                else:  # the directions alone: values and counts served the first pass
                    mu, inv = _load_directions(sk_ptr, cb_ptr, s_base, cb_base, n, nmask, offs_d, dmask, D, STATIC)
                    sim = _direct_sim(k_hi, k_lo, mu, ASSIGN_PREC)
                best_val, best_idx = _track_best(sim, nmask, r0, s, NB, best_val, best_idx)

        writer = s == (c % NB)  # the program that writes z and resets an exchange buffer for this chunk
        if NB > 1:
            slot = ((bh * 2 + c % 2) * NB + s) * BL + offs_l
            tl.store(xstat_ptr + slot * 2, row_max)
            tl.store(xstat_ptr + slot * 2 + 1, row_sum)
            tl.store(xacc_ptr + slot[:, None] * BDV + offs_dv[None, :], acc)
            # Each key's best slot over the slices: one atomic max of packed (similarity, slot) per key into this
            # chunk's buffer (three in turn: the writer of chunk c resets chunk c + 2's after the barrier, when
            # every program has read it at chunk c - 1). A loop over the slices' stored pairs cost every program
            # NB iterations with four barriers each.
            best_row = (bh * 3 + c % 3) * BL + offs_l
            tl.atomic_max(xbest_ptr + best_row, _pack_best(best_val, best_idx), sem="relaxed", scope="gpu")
            # Spin barrier over the NB programs of this bh (the counter only grows: no reset race).
            tl.atomic_add(bar_ptr + bh, 1, sem="acq_rel", scope="gpu")
            arrived = tl.atomic_add(bar_ptr + bh, 0, sem="acq_rel", scope="gpu")
            while arrived < NB * (c + 1):
                arrived = tl.atomic_add(bar_ptr + bh, 0, sem="acq_rel", scope="gpu")
            best_val, best_idx = _unpack_best(tl.load(xbest_ptr + best_row, cache_modifier=".cg"))
            if writer:
                tl.store(xbest_ptr + (bh * 3 + (c + 2) % 3) * BL + offs_l,
                         tl.full([BL], -9223372036854775808, tl.int64))

        # ---- the write's decisions: farthest-point picks, then argmax over old and new centroids ----
        z = tl.full([BL], -1, tl.int32)
        own = offs_l < 0  # this chunk's tokens that land in this program's slots
        zs = tl.zeros([BL], tl.int32)
        k = tl.load(k_ptr + qk_off, mask=tmask[:, None] & dmask[None, :], other=0.0)
        if full & (m + n_new > 0):
            z = best_idx
            if n_new > 0:  # most chunks of a long sequence open none: no picks
                # Farthest-point picks, from the chunk's Gram matrix when the launch's chunks open many centroids
                # (triton_chunk.gram_picks), else by a key load and a reduction over D per pick
                sim_pick = tl.where(in_chunk, best_val, float("inf"))  # padding rows are never picked
                if GRAM_PICKS:
                    order, new_val, new_ord = _picks_from_gram(
                        k, sim_pick, n_new, gram_ptr + (bh * NB + s) * (BL + 3) * BL, offs_l, BL, ASSIGN_PREC)
                else:
                    order, new_val, new_ord = _picks_from_rows(k, sim_pick, n_new, k_ptr + (bh * T + c * L) * D,
                                                               offs_l, offs_d, dmask, D, BL)
                picked = order >= 0
                z = tl.where(picked, m + order, tl.where(new_val > best_val, m + new_ord, best_idx))
            z = tl.where(in_chunk, z, -1)
            own = in_chunk & ((z % NB) == s)
            zs = tl.where(own, z, 0)
            v = tl.load(v_ptr + v_off, mask=tmask[:, None] & dvmask[None, :], other=0.0)  # (not live in the picks)
            if ORDERED_SCATTER:
                # each slot's tokens grouped by a one-hot product and added by the first of them (the slot's owner is
                # this program, and a group has one first token: plain loads and stores)
                same = (z[:, None] == z[None, :]) & own[:, None] & own[None, :]
                lead = own & (tl.min(tl.where(same, offs_l[None, :], BL), axis=1) == offs_l)
                group = same.to(tl.float32)
                if not STATIC:
                    _add_in_order(sk_ptr, s_base + zs, k, group, lead, offs_d, dmask, D, ASSIGN_PREC)
                _add_in_order(sv_ptr, s_base + zs, v, group, lead, offs_dv, dvmask, DV, ASSIGN_PREC)
                cnt_old = tl.load(cnt_ptr + s_base + zs, mask=lead, other=0.0)
                tl.store(cnt_ptr + s_base + zs, cnt_old + tl.sum(group, axis=1), mask=lead)
            else:
                if not STATIC:
                    tl.atomic_add(sk_ptr + (s_base + zs)[:, None] * D + offs_d[None, :], k,
                                  mask=own[:, None] & dmask[None, :], sem="relaxed")
                tl.atomic_add(sv_ptr + (s_base + zs)[:, None] * DV + offs_dv[None, :], v,
                              mask=own[:, None] & dvmask[None, :], sem="relaxed")
                tl.atomic_add(cnt_ptr + s_base + zs, tl.full([BL], 1.0, tl.float32), mask=own, sem="relaxed")
        if writer:  # (stored here, z is not live through the output's merge)
            tl.store(z_ptr + bh * T + t, z, mask=tmask)
        tl.debug_barrier()
        if CACHED:  # the slots this chunk changed get fresh operands (a slot hit twice is written twice, alike)
            _refresh_operands(sk_ptr, sv_ptr, cnt_ptr, cb_ptr, crd_ptr, chi_ptr, clo_ptr, cmv_ptr, cpr_ptr, s_base,
                              c_base, cb_base, zs, own, offs_d, dmask, offs_dv, dvmask, D, DV, BD, BDV, COUNT_PRIOR,
                              STATIC, READ_PREC, ASSIGN_PREC)
            tl.debug_barrier()

        # ---- the chunk's output: the dictionary's read merged with the chunk's attention to its own keys ----
        if NB > 1:
            # Every slice merges the NB stored partial reads for its share of the rows (MERGE_ROWS each), so no
            # program carries the whole merge (NB loads of [BL, BDV]) into the next chunk's barrier.
            rows = s * MERGE_ROWS + tl.arange(0, MERGE_ROWS)
            rmask = rows < BL
            m_rows = tl.full([MERGE_ROWS], float("-inf"), tl.float32)
            sum_rows = tl.zeros([MERGE_ROWS], tl.float32)
            acc_rows = tl.zeros([MERGE_ROWS, BDV], tl.float32)
            for j in range(0, NB):
                other = ((bh * 2 + c % 2) * NB + j) * BL + rows
                j_max = tl.load(xstat_ptr + other * 2, mask=rmask, other=float("-inf"), cache_modifier=".cg")
                j_sum = tl.load(xstat_ptr + other * 2 + 1, mask=rmask, other=0.0, cache_modifier=".cg")
                j_acc = tl.load(xacc_ptr + other[:, None] * BDV + offs_dv[None, :], mask=rmask[:, None], other=0.0,
                                cache_modifier=".cg")
                new_max = tl.maximum(m_rows, j_max)
                safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
                a_self = tl.exp2(m_rows - safe_max)
                a_j = tl.exp2(j_max - safe_max)
                sum_rows = sum_rows * a_self + j_sum * a_j
                acc_rows = acc_rows * a_self[:, None] + j_acc * a_j[:, None]
                m_rows = new_max
            _finish_rows(o_ptr, lse_ptr, bh, T, c, L, rows, m_rows, sum_rows, acc_rows, offs_dv, dvmask, DV)
        else:
            _finish_rows(o_ptr, lse_ptr, bh, T, c, L, offs_l, row_max, row_sum, acc, offs_dv, dvmask, DV)


@triton.jit
def ovq_fwd_local_kernel(
    q_ptr, k_ptr, v_ptr, beta_ptr, o_ptr, lse_ptr,
    T, H,
    D: tl.constexpr, DV: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr, READ_PREC: tl.constexpr, KB: tl.constexpr,
):
    """Each chunk's causal attention to its own keys, one program per (chunk, bh), KB keys at a time (no L x L
    tile): its normalized output into o and its base-2 lse into lse, which ``ovq_fwd_kernel`` then merges with
    the dictionary's read and overwrites."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    beta2 = tl.load(beta_ptr + bh % H) * LOG2E
    offs_l = tl.arange(0, BL)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    dmask = offs_d < D
    dvmask = offs_dv < DV
    t = c * L + offs_l
    tmask = (offs_l < L) & (t < T)
    q = tl.load(q_ptr + (bh * T + t)[:, None] * D + offs_d[None, :], mask=tmask[:, None] & dmask[None, :], other=0.0)
    row_max = tl.full([BL], float("-inf"), tl.float32)
    row_sum = tl.zeros([BL], tl.float32)
    acc = tl.zeros([BL, BDV], tl.float32)
    for kb in range(0, BL, KB):
        offs_kb = kb + tl.arange(0, KB)
        t_kb = c * L + offs_kb
        kb_mask = (offs_kb < L) & (t_kb < T)
        k_blk = tl.load(k_ptr + (bh * T + t_kb)[:, None] * D + offs_d[None, :], mask=kb_mask[:, None] & dmask[None, :],
                        other=0.0)
        v_blk = tl.load(v_ptr + (bh * T + t_kb)[:, None] * DV + offs_dv[None, :],
                        mask=kb_mask[:, None] & dvmask[None, :], other=0.0)
        s_loc = beta2 * _mm(q, tl.trans(k_blk), READ_PREC)
        s_loc = tl.where((offs_kb[None, :] <= offs_l[:, None]) & kb_mask[None, :], s_loc, float("-inf"))
        row_max, row_sum, acc = _softmax_step(row_max, row_sum, acc, s_loc, v_blk, READ_PREC)
    safe_max = tl.where(row_max == float("-inf"), 0.0, row_max)
    row_sum = tl.where(row_sum > 0, row_sum, 1.0)
    tl.store(o_ptr + (bh * T + t)[:, None] * DV + offs_dv[None, :], acc / row_sum[:, None],
             mask=tmask[:, None] & dvmask[None, :])
    tl.store(lse_ptr + bh * T + t, safe_max + tl.log2(row_sum), mask=tmask)


@triton.jit
def ovq_bwd_local_kernel(
    q_ptr, k_ptr, v_ptr, beta_ptr, do_ptr, lse_ptr, delta_ptr,
    dq_ptr, dk_ptr, dv_ptr, dbeta_ptr,
    T, H, C,
    D: tl.constexpr, DV: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr, READ_PREC: tl.constexpr, KB: tl.constexpr,
):
    """Gradients of the in-chunk (causal, local) part of the softmax, one program per (chunk, bh); the
    chunk's keys KB at a time (no L x L tile)."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    beta = tl.load(beta_ptr + bh % H)
    offs_l = tl.arange(0, BL)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    t = c * L + offs_l
    tmask = (offs_l < L) & (t < T)
    dmask = offs_d < D
    dvmask = offs_dv < DV
    qk_off = (bh * T + t)[:, None] * D + offs_d[None, :]
    v_off = (bh * T + t)[:, None] * DV + offs_dv[None, :]
    q = tl.load(q_ptr + qk_off, mask=tmask[:, None] & dmask[None, :], other=0.0)
    do = tl.load(do_ptr + v_off, mask=tmask[:, None] & dvmask[None, :], other=0.0)
    lse2 = tl.load(lse_ptr + bh * T + t, mask=tmask, other=0.0) * LOG2E
    delta = tl.load(delta_ptr + bh * T + t, mask=tmask, other=0.0)
    dq = tl.zeros([BL, BD], tl.float32)
    dbeta = tl.zeros([BL], tl.float32)
    for kb in range(0, BL, KB):
        offs_kb = kb + tl.arange(0, KB)
        t_kb = c * L + offs_kb
        kb_mask = (offs_kb < L) & (t_kb < T)
        kb_off = (bh * T + t_kb)[:, None] * D + offs_d[None, :]
        vb_off = (bh * T + t_kb)[:, None] * DV + offs_dv[None, :]
        k = tl.load(k_ptr + kb_off, mask=kb_mask[:, None] & dmask[None, :], other=0.0)
        v = tl.load(v_ptr + vb_off, mask=kb_mask[:, None] & dvmask[None, :], other=0.0)
        raw = _mm(q, tl.trans(k), READ_PREC)
        valid = (offs_kb[None, :] <= offs_l[:, None]) & kb_mask[None, :] & tmask[:, None]
        p = tl.where(valid, tl.exp2(beta * LOG2E * raw - lse2[:, None]), 0.0)
        dp = _mm(do, tl.trans(v), READ_PREC)
        ds = p * (dp - delta[:, None])
        dq += beta * _mm(ds, k, READ_PREC)
        dbeta += tl.sum(ds * raw, axis=1)
        tl.store(dk_ptr + kb_off, beta * _mm(tl.trans(ds), q, READ_PREC), mask=kb_mask[:, None] & dmask[None, :])
        tl.store(dv_ptr + vb_off, _mm(tl.trans(p), do, READ_PREC), mask=kb_mask[:, None] & dvmask[None, :])
    tl.store(dq_ptr + qk_off, dq, mask=tmask[:, None] & dmask[None, :])
    tl.store(dbeta_ptr + bh * C + c, tl.sum(dbeta, axis=0))


@triton.jit
def _load_rows(ptr, rows, offs, W: tl.constexpr, BW: tl.constexpr):
    """Rows ``rows`` [R, BW] of a row-major buffer of width W, unmasked but for the columns past W (zeros)."""
    addr = ptr + rows[:, None] * W + offs[None, :]
    if W == BW:
        return tl.load(addr, cache_modifier=".cg")
    else:
        return tl.load(addr, mask=(offs < W)[None, :], other=0.0, cache_modifier=".cg")


@triton.jit
def _inverse_count(cnt):
    """The dictionary backward's 1/count per slot, 0 for an empty slot (so it also says which slots were read)."""
    return tl.where(cnt > 0.5, 1.0 / tl.maximum(cnt, 1.0), 0.0)


@triton.jit
def _store_read_operands(sk_ptr, sv_ptr, cnt_ptr, cb_ptr, crd_ptr, cmv_ptr, csc_ptr, base, cb_base, n, nmask,
                         offs_d, dmask, offs_dv, dvmask, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr,
                         BDV: tl.constexpr, STATIC: tl.constexpr, READ_PREC: tl.constexpr):
    """The dictionary backward's cached operands of the slots ``n`` (rows ``base + n``): the unit key direction and
    the value mean in the read's precision, and [1/||sum_k||, 1/count] in float32 (1/count 0 for an empty slot),
    computed from the sums when they change instead of in every block of every chunk."""
    mu, muv, cnt, inv = _load_centroids(sk_ptr, sv_ptr, cnt_ptr, cb_ptr, base, cb_base, n, nmask, offs_d, dmask,
                                        offs_dv, dvmask, D, DV, STATIC)
    tl.store(crd_ptr + (base + n)[:, None] * BD + offs_d[None, :], _operand(mu, READ_PREC), mask=nmask[:, None])
    tl.store(cmv_ptr + (base + n)[:, None] * BDV + offs_dv[None, :], _operand(muv, READ_PREC), mask=nmask[:, None])
    tl.store(csc_ptr + (base + n) * 2, inv, mask=nmask)
    tl.store(csc_ptr + (base + n) * 2 + 1, _inverse_count(cnt), mask=nmask)


@triton.jit
def _load_read_operands(crd_ptr, cmv_ptr, csc_ptr, rows, offs_d, offs_dv, BD: tl.constexpr, BDV: tl.constexpr):
    """The cached read operands of whole blocks of slot rows (``_store_read_operands``): unit direction and value
    mean in the read's precision, 1/||sum_k|| and 1/count."""
    mu_op = tl.load(crd_ptr + rows[:, None] * BD + offs_d[None, :], cache_modifier=".cg")
    muv_op = tl.load(cmv_ptr + rows[:, None] * BDV + offs_dv[None, :], cache_modifier=".cg")
    inv = tl.load(csc_ptr + rows * 2, cache_modifier=".cg")
    inv_cnt = tl.load(csc_ptr + rows * 2 + 1, cache_modifier=".cg")
    return mu_op, muv_op, inv, inv_cnt


@triton.jit
def _read_rows(q_ptr, do_ptr, lse_ptr, delta_ptr, bh, T, t, tmask, qk_off, v_off, beta, dmask, dvmask,
               READ_PREC: tl.constexpr):
    """A chunk's rows for the backward of its read: q (scaled to base-2 logits, as the forward's) and dO as product
    operands, lse in base 2 and delta. A row past the sequence reads lse = +inf, so its p is exp2(-inf) = 0 without
    a mask per element."""
    q = tl.load(q_ptr + qk_off, mask=tmask[:, None] & dmask[None, :], other=0.0)
    do = tl.load(do_ptr + v_off, mask=tmask[:, None] & dvmask[None, :], other=0.0)
    lse2 = tl.load(lse_ptr + bh * T + t, mask=tmask, other=float("inf")) * LOG2E
    delta = tl.load(delta_ptr + bh * T + t, mask=tmask, other=0.0)
    return _operand(q * (beta * LOG2E), READ_PREC), _operand(do, READ_PREC), lse2, delta


@triton.jit
def _store_slice_rows(sk_ptr, sv_ptr, cnt_ptr, cb_ptr, off_ptr, crd_ptr, cmv_ptr, csc_ptr, s, N, p_base, cb_base,
                      offs_n, offs_d, dmask, offs_dv, dvmask, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr,
                      BDV: tl.constexpr, BN: tl.constexpr, NB: tl.constexpr, COUNT_PRIOR: tl.constexpr,
                      STATIC: tl.constexpr, READ_PREC: tl.constexpr, CACHED: tl.constexpr):
    """The dictionary backward's start: each slot of the slice gets its offset row (log2 count with the prior; -inf
    when empty; stored when a count changes rather than taken per block) and, with CACHED, its read operands, from
    the final sums."""
    for r0 in range(0, _slots_in_slice(N, s, NB), BN):
        n = s + NB * (r0 + offs_n)
        cnt = tl.load(cnt_ptr + p_base + n, mask=n < N, other=0.0)
        _store_offset_rows(off_ptr, p_base + n, cnt, n < N, COUNT_PRIOR, READ_PREC)
        if CACHED:
            _store_read_operands(sk_ptr, sv_ptr, cnt_ptr, cb_ptr, crd_ptr, cmv_ptr, csc_ptr, p_base, cb_base, n,
                                 n < N, offs_d, dmask, offs_dv, dvmask, D, DV, BD, BDV, STATIC, READ_PREC)
    tl.debug_barrier()


@triton.jit
def _read_grads(dq, q_op, do_op, lse2, delta, mu_op, mu, muv_op, inv, inv_cnt, off_rows, ones_w, gk_ptr, gv_ptr, g_rows,
                readable, offs_d, dmask, offs_dv, dvmask, D: tl.constexpr, DV: tl.constexpr, STATIC: tl.constexpr,
                DETACH: tl.constexpr, READ_PREC: tl.constexpr):
    """The gradient of one chunk's read of one block of slots, from the slots' read operands (``mu`` the unit
    directions in float32, ``inv`` 1/||sum_k||, ``inv_cnt`` 1/count) and the chunk's rows (``_read_rows``).
    Returns ``dq`` + ds @ mu (the block's share of dq, before beta: added where the product is, which keeps the
    compiled loop as it was before this helper); the gradients w.r.t. the slots' key and value sums are added to
    G's rows ``g_rows`` (the readable slots), each right after its product.
    Whole blocks, unmasked: a slot past the ones the chunk read (opened later: rewound to count 0) or past N
    (padding) has a -inf offset row, so p = 0 there, and count 0, so no gradient is added."""
    logits = _mm_acc(q_op, tl.trans(mu_op), _mm(ones_w, tl.trans(off_rows), READ_PREC), READ_PREC)
    p = tl.exp2(logits - lse2[:, None])  # 0 for empty slots (-inf offsets) and rows past the sequence
    dp = _mm(do_op, tl.trans(muv_op), READ_PREC)
    ds = p * (dp - delta[:, None])
    dq += _mm(ds, mu_op, READ_PREC)
    if not DETACH:
        rows_k = g_rows[:, None] * D + offs_d[None, :]
        rows_v = g_rows[:, None] * DV + offs_dv[None, :]
        # G += this read's gradient as fire-and-forget adds (each slot has one owner, so the sum is the
        # load-add-store's): a load here would wait on L2 right after the products and cost two
        # layout round trips through shared memory (compiled for sm_90)
        if not STATIC:
            dmu = _mm(tl.trans(ds), q_op, READ_PREC) * LN2  # q_op carries beta * log2(e)
            dsk = (dmu - mu * tl.sum(mu * dmu, axis=1)[:, None]) * inv[:, None]
            tl.atomic_add(gk_ptr + rows_k, dsk, mask=readable[:, None] & dmask[None, :], sem="relaxed")
        dsv = _mm(tl.trans(p), do_op, READ_PREC) * inv_cnt[:, None]
        tl.atomic_add(gv_ptr + rows_v, dsv, mask=readable[:, None] & dvmask[None, :], sem="relaxed")
    return dq


@triton.jit
def _bwd_program(beta_ptr, H, D: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BL: tl.constexpr,
                 BD: tl.constexpr, BDV: tl.constexpr):
    """A dictionary backward program's slice and (batch, head), its head's beta, and the chunk rows' and head
    dimensions' offsets and masks."""
    s = tl.program_id(0)
    bh = tl.program_id(1)
    h = bh % H
    offs_l = tl.arange(0, BL)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    return s, bh, h, tl.load(beta_ptr + h), offs_l, offs_d, offs_dv, offs_d < D, offs_dv < DV, offs_l < L


@triton.jit
def _add_dq(q_ptr, dq_ptr, qk_off, tmask, dmask, beta, dq):
    """dq rows += beta * (the chunk's sum of ds @ mu over this slice's blocks), atomically (the slices all add);
    returns the chunk's dbeta share: the sum over slots of ds * (q . mu) = q . (sum of ds mu), without the blocks'
    raw logits (q reloaded: keeping the float32 q live through the block loop costs registers)."""
    q = tl.load(q_ptr + qk_off, mask=tmask[:, None] & dmask[None, :], other=0.0)
    dbeta = tl.sum(q * dq)
    tl.atomic_add(dq_ptr + qk_off, beta * dq, mask=tmask[:, None] & dmask[None, :], sem="relaxed")
    return dbeta


@triton.jit
def _add_gathered(dk_ptr, dv_ptr, gk_ptr, gv_ptr, g_rows, own, qk_off, v_off, offs_d, dmask, offs_dv, dvmask,
                  D: tl.constexpr, DV: tl.constexpr, STATIC: tl.constexpr):
    """dk and dv rows of the ``own`` tokens (``qk_off``, ``v_off``) += the gradient rows ``g_rows`` of gk and gv
    (their slots')."""
    if not STATIC:
        gk = tl.load(gk_ptr + g_rows[:, None] * D + offs_d[None, :], mask=own[:, None] & dmask[None, :], other=0.0,
                     cache_modifier=".cg")
        dk = tl.load(dk_ptr + qk_off, mask=own[:, None] & dmask[None, :], other=0.0)
        tl.store(dk_ptr + qk_off, dk + gk, mask=own[:, None] & dmask[None, :])
    gv = tl.load(gv_ptr + g_rows[:, None] * DV + offs_dv[None, :], mask=own[:, None] & dvmask[None, :], other=0.0,
                 cache_modifier=".cg")
    dv = tl.load(dv_ptr + v_off, mask=own[:, None] & dvmask[None, :], other=0.0)
    tl.store(dv_ptr + v_off, dv + gv, mask=own[:, None] & dvmask[None, :])


@triton.jit
def _merge_and_rewind(z_ptr, k_ptr, v_ptr, sk_ptr, sv_ptr, cnt_ptr, cb_ptr, gk_ptr, gv_ptr, off_ptr, crd_ptr, cmv_ptr,
                      csc_ptr, dk_ptr, dv_ptr, bh, s, T, t, tmask, qk_off, v_off, s_base, p_base, cb_base, offs_d,
                      dmask, offs_dv, dvmask, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr,
                      BDV: tl.constexpr, NB: tl.constexpr, COUNT_PRIOR: tl.constexpr, STATIC: tl.constexpr,
                      DETACH: tl.constexpr, READ_PREC: tl.constexpr, CACHED: tl.constexpr):
    """The dictionary backward's step for the tokens a chunk (rows ``t``) merged into this slice's slots: each takes
    the gradient of every later read of its centroid (G, into its dk and dv rows), then leaves the scratch sums,
    which then hold the dictionary the chunk read; the rewound slots' offset rows (``off_ptr``) and, with CACHED,
    read operands (``crd_ptr``, ``cmv_ptr``, ``csc_ptr``) are stored anew."""
    z = tl.load(z_ptr + bh * T + t, mask=tmask, other=-1)
    own = (z >= 0) & ((z % NB) == s)
    zs = tl.where(own, z, 0)
    k = tl.load(k_ptr + qk_off, mask=tmask[:, None] & dmask[None, :], other=0.0)
    v = tl.load(v_ptr + v_off, mask=tmask[:, None] & dvmask[None, :], other=0.0)
    if not DETACH:
        _add_gathered(dk_ptr, dv_ptr, gk_ptr, gv_ptr, s_base + zs, own, qk_off, v_off, offs_d, dmask, offs_dv, dvmask,
                      D, DV, STATIC)
    if not STATIC:
        tl.atomic_add(sk_ptr + (p_base + zs)[:, None] * D + offs_d[None, :], -k, mask=own[:, None] & dmask[None, :],
                      sem="relaxed")
    tl.atomic_add(sv_ptr + (p_base + zs)[:, None] * DV + offs_dv[None, :], -v, mask=own[:, None] & dvmask[None, :],
                  sem="relaxed")
    tl.atomic_add(cnt_ptr + p_base + zs, tl.full(zs.shape, -1.0, tl.float32), mask=own, sem="relaxed")
    tl.debug_barrier()
    # the rewound slots' offset rows (a slot hit twice is written twice, alike; one rewound to empty reads -inf)
    cnt_z = tl.load(cnt_ptr + p_base + zs, mask=own, other=0.0, cache_modifier=".cg")
    _store_offset_rows(off_ptr, p_base + zs, cnt_z, own, COUNT_PRIOR, READ_PREC)
    if CACHED:  # ... and cached operands
        _store_read_operands(sk_ptr, sv_ptr, cnt_ptr, cb_ptr, crd_ptr, cmv_ptr, csc_ptr, p_base, cb_base, zs, own,
                             offs_d, dmask, offs_dv, dvmask, D, DV, BD, BDV, STATIC, READ_PREC)
    tl.debug_barrier()


@triton.jit
def ovq_bwd_dict_kernel(
    q_ptr, k_ptr, v_ptr, beta_ptr, do_ptr, lse_ptr, delta_ptr, z_ptr, sched_ptr,
    sk_ptr, sv_ptr, cnt_ptr, cb_ptr, gk_ptr, gv_ptr, off_ptr, crd_ptr, cmv_ptr, csc_ptr,
    dq_ptr, dk_ptr, dv_ptr, dbeta_ptr,
    T, N, H, C,
    D: tl.constexpr, DV: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr, BN: tl.constexpr, NB: tl.constexpr,
    COUNT_PRIOR: tl.constexpr, STATIC: tl.constexpr, DETACH: tl.constexpr, READ_PREC: tl.constexpr,
    CACHED: tl.constexpr = False,
):
    """Gradients through the dictionary: a reverse scan over chunks per (slice, bh).

    sk/sv/cnt hold the *final* sums on entry (a scratch copy: they are rewound chunk by chunk);
    gk/gv hold the gradient w.r.t. the final sums on entry and w.r.t. the initial sums on exit. off is scratch
    for each slot's logit offset row (``_store_offset_rows``), kept up to date as the counts are rewound.
    dq, dk and dv hold the in-chunk attention's gradients (``ovq_bwd_local_kernel``) on entry, and the
    dictionary's are added: to dq atomically (NB slices contribute), to a token's dk/dv row by the slice that
    owns its centroid.
    """
    s, bh, h, beta, offs_l, offs_d, offs_dv, dmask, dvmask, in_chunk = _bwd_program(beta_ptr, H, D, DV, L, BL, BD, BDV)
    offs_n = tl.arange(0, BN)
    s_base = bh * N  # row offset of this bh's gradients (gk, gv)
    # ... and of its scratch sums, counts and offset rows (and codes), padded so that every slice holds whole
    # blocks: the padded rows read as empty slots (zero sums, count 0, -inf offsets), so the block loop loads
    # whole blocks without masks
    p_base = bh * _padded_rows(N, NB, BN)
    cb_base = h * _padded_rows(N, NB, BN) * D
    ones_w = _ones_for_offsets(BL, READ_PREC)
    offs_w = tl.arange(0, OFFW)
    _store_slice_rows(sk_ptr, sv_ptr, cnt_ptr, cb_ptr, off_ptr, crd_ptr, cmv_ptr, csc_ptr, s, N, p_base, cb_base,
                      offs_n, offs_d, dmask, offs_dv, dvmask, D, DV, BD, BDV, BN, NB, COUNT_PRIOR, STATIC, READ_PREC,
                      CACHED)
    dbeta = 0.0  # a scalar: a [BL] accumulator fixed the reduction's layout (two [BL, BD] conversions a chunk)
    for cc in range(0, C):
        c = C - 1 - cc
        t = c * L + offs_l
        tmask = in_chunk & (t < T)
        qk_off = (bh * T + t)[:, None] * D + offs_d[None, :]
        v_off = (bh * T + t)[:, None] * DV + offs_dv[None, :]
        m = tl.load(sched_ptr + 2 * c)
        # (1) tokens merged by this chunk: take the gradient of every later read of their centroid,
        #     then rewind the sums to the dictionary this chunk read.
        _merge_and_rewind(z_ptr, k_ptr, v_ptr, sk_ptr, sv_ptr, cnt_ptr, cb_ptr, gk_ptr, gv_ptr, off_ptr, crd_ptr,
                          cmv_ptr, csc_ptr, dk_ptr, dv_ptr, bh, s, T, t, tmask, qk_off, v_off, s_base, p_base,
                          cb_base, offs_d, dmask, offs_dv, dvmask, D, DV, BD, BDV, NB, COUNT_PRIOR, STATIC, DETACH,
                          READ_PREC, CACHED)

        # (2) the gradient of this chunk's reads of its dictionary.
        # (loaded here, not before the rewind: session 20 timed that order, BWD_EARLY_LOADS at b63434f, no gain)
        q_op, do_op, lse2, delta = _read_rows(q_ptr, do_ptr, lse_ptr, delta_ptr, bh, T, t, tmask, qk_off, v_off, beta,
                                              dmask, dvmask, READ_PREC)
        m_loc = _slots_in_slice(m, s, NB)
        dq = tl.zeros([BL, BD], tl.float32)  # sum of ds @ mu over the blocks: beta and dbeta come after the loop
        for r0 in range(0, m_loc, BN):
            n = s + NB * (r0 + offs_n)  # (whole blocks, unmasked: see _read_grads)
            if CACHED:  # (the projection below takes the direction in the read's precision)
                mu_op, muv_op, inv, inv_cnt = _load_read_operands(crd_ptr, cmv_ptr, csc_ptr, p_base + n, offs_d,
                                                                  offs_dv, BD, BDV)
                mu = mu_op.to(tl.float32)
            else:
                cnt = tl.load(cnt_ptr + p_base + n, cache_modifier=".cg")
                if STATIC:
                    mu = _load_rows(cb_ptr + cb_base, n, offs_d, D, BD)
                    inv = tl.full(n.shape, 1.0, tl.float32)
                else:
                    mu, inv = _unit_rows(_load_rows(sk_ptr, p_base + n, offs_d, D, BD))
                inv_cnt = _inverse_count(cnt)
                muv_op = _operand(_load_rows(sv_ptr, p_base + n, offs_dv, DV, BDV) * inv_cnt[:, None], READ_PREC)
                mu_op = _operand(mu, READ_PREC)
            readable = inv_cnt > 0.0
            off_rows = tl.load(off_ptr + (p_base + n)[:, None] * OFFW + offs_w[None, :], cache_modifier=".cg")
            dq = _read_grads(dq, q_op, do_op, lse2, delta, mu_op, mu, muv_op, inv, inv_cnt, off_rows, ones_w, gk_ptr,
                             gv_ptr, s_base + n, readable, offs_d, dmask, offs_dv, dvmask, D, DV, STATIC, DETACH,
                             READ_PREC)
        if m_loc > 0:
            dbeta += _add_dq(q_ptr, dq_ptr, qk_off, tmask, dmask, beta, dq)
        tl.debug_barrier()
    tl.store(dbeta_ptr + bh * NB + s, dbeta)
