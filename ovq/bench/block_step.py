"""The dictionary backward's inner step alone, in Triton and in Gluon, in the op's design and in the candidate one.

Why: the dictionary backward (``ovq.ops.kernels.ovq_bwd_dict_kernel``) spends its time in a loop over 64-centroid
blocks that is bound by latency: each of its products is waited for before the next is issued (``tl.dot`` on
Hopper; Triton 3.6's automatic warp specialization is for Blackwell only), at one program per SM. And it reads and
writes every active slot's float32 gradient accumulators G in every chunk, which puts the target of 1.5x GDN below
its byte floor. Triton's experimental Gluon dialect issues Hopper's warpgroup products asynchronously and waits where
told. Each kernel here runs one (block, chunk) pair per iteration, with the same five products on synthetic data:
- ``step_*`` (the op's design): one chunk's q and dO stay, the iterations walk blocks of centroids, and G is added
  atomically per block;
- ``resident_*`` (the candidate of docs/kernels.md, "What the targets ask of the hardware"): one block of centroids
  stays with its G accumulating on chip, the iterations walk chunks, and each chunk's share of dq is added
  atomically instead; without the rewinds and the merged tokens' gathers the real one would need;
- ``shared_g_gluon`` (the op's design with each slice's G in shared memory, which Triton cannot index; sized in
  docs/kernels.md, "Session 16"): the step with G read and written in shared memory instead of added atomically;
- ``shared_gv_gluon`` (the second sizing there, "Session 17": today's 8 slices, whose 512 slots' G_v alone fits in
  shared memory): G_v in shared memory for 8 blocks, G_k still added atomically;
- ``*_triton`` waits for every product; ``*_gluon`` keeps the read's two products in flight together (the next
  iteration's loads issued behind them), then the three gradient products.

Per iteration: q, dO ([BL, BD], bf16, q carrying beta log2 e), base-2 lse and the row term delta; BN unit
directions and value means (bf16) with base-2 logit offsets. Not the op: no rewind, no count or normalization work.

Usage:
  python -m ovq.bench.block_step --compile-only   # any machine: compile all for sm_90, count products and waits
  python -m ovq.bench.block_step                  # a GPU: check each Gluon kernel against its Triton twin, time all

Measured (session 16, H200, results/block_step_h200.json): each Gluon kernel matches its Triton twin (dq, G to 3e-5);
per pair, the op's design 4.46 us (Triton) and 4.16 (Gluon), the resident one 3.13 and 3.13. The resident design built
in full (docs/kernels.md, "Session 16") was slower than the op's: its rewinds and gathers cost more than this step.
G in shared memory, first timed as a script (results/s16_block_step_smem_g_h200.json): 2.84 us against step_gluon's
4.19, with G equal to 2.3e-6. Session 17 (results/s17_block_step_shared_gv_h200.json): shared_g 2.83 us, shared_gv
3.02 (G_k's atomic adds alone cost 0.19 us a pair; both G's, 1.34).
"""

from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource

from ..ops.gluon_bwd import block_step_layouts, gradient_products, read_products, stage_operands, store_scores
from .common import environment, save_json, saving_rows


@triton.jit
def step_triton(q_ptr, do_ptr, lse_ptr, delta_ptr, mu_ptr, muv_ptr, off_ptr, gk_ptr, gv_ptr, dq_ptr, NBLK,
                BL: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
    """The block step as ``ovq_bwd_dict_kernel`` writes it: ``tl.dot`` waits for each product before the next."""
    pid = tl.program_id(0)
    rows = tl.arange(0, BL)
    cols = tl.arange(0, BD)
    offs_n = tl.arange(0, BN)
    q = tl.load(q_ptr + pid * BL * BD + rows[:, None] * BD + cols[None, :])
    do = tl.load(do_ptr + pid * BL * BD + rows[:, None] * BD + cols[None, :])
    lse2 = tl.load(lse_ptr + pid * BL + rows)
    delta = tl.load(delta_ptr + pid * BL + rows)
    dq = tl.zeros([BL, BD], tl.float32)
    for j in range(0, NBLK):
        n = j * BN + offs_n
        mu = tl.load(mu_ptr + n[:, None] * BD + cols[None, :])
        muv = tl.load(muv_ptr + n[:, None] * BD + cols[None, :])
        off = tl.load(off_ptr + n)
        p = tl.exp2(tl.dot(q, tl.trans(mu)) + off[None, :] - lse2[:, None])
        ds = p * (tl.dot(do, tl.trans(muv)) - delta[:, None])
        dq += tl.dot(ds.to(tl.bfloat16), mu)
        g = (pid * NBLK + j) * BN + offs_n
        tl.atomic_add(gk_ptr + g[:, None] * BD + cols[None, :], tl.dot(tl.trans(ds.to(tl.bfloat16)), q), sem="relaxed")
        tl.atomic_add(gv_ptr + g[:, None] * BD + cols[None, :], tl.dot(tl.trans(p.to(tl.bfloat16)), do), sem="relaxed")
    tl.store(dq_ptr + pid * BL * BD + rows[:, None] * BD + cols[None, :], dq)


# Blocks of G a shared_g program keeps in shared memory (2 x 4 x 64 x 64 float32 = 128 KB, beside ~80 KB of operands):
# iteration j updates block j % SHARED_G_BLOCKS, as a slice of 4 blocks would visit its blocks chunk after chunk;
# shared_gv keeps G_v alone for twice as many blocks (8 x 64 x 64 float32 = 128 KB), a slice of 8 blocks
SHARED_G_BLOCKS = gl.constexpr(4)
SHARED_GV_BLOCKS = gl.constexpr(8)


@gluon.jit
def _step_gluon(q_ptr, do_ptr, lse_ptr, delta_ptr, mu_ptr, muv_ptr, off_ptr, gk_ptr, gv_ptr, dq_ptr, NBLK,
                BL: gl.constexpr, BN: gl.constexpr, BD: gl.constexpr, G_HOME: gl.constexpr):
    """The op's step with asynchronous warpgroup products (two in flight for the read, three for the gradients), G
    added atomically per block (G_HOME "global"), or kept in shared memory, both G_k and G_v ("shared", for
    SHARED_G_BLOCKS blocks) or G_v alone ("shared_v", SHARED_GV_BLOCKS blocks; G_k added atomically): each block's G
    read (each thread its own elements, in the products' accumulator layout, so no barrier) before the block's
    products finish, accumulated by them and written back; on exit the blocks' G go to rows ``(pid * RES + b) * BN``
    for RES the blocks kept."""
    W: gl.constexpr = gl.num_warps()
    SHARED_K: gl.constexpr = G_HOME == "shared"
    SHARED_V: gl.constexpr = G_HOME != "global"
    RES: gl.constexpr = SHARED_G_BLOCKS if SHARED_K else SHARED_GV_BLOCKS
    pid = gl.program_id(0)
    lay: gl.constexpr = block_step_layouts(W, BL, BN, BD, gl.bfloat16)
    blocked: gl.constexpr = lay.blocked
    acc_l: gl.constexpr = lay.read
    dq_l: gl.constexpr = lay.dq
    accg_l: gl.constexpr = lay.grad
    op_l: gl.constexpr = lay.chunk_op
    blk_l: gl.constexpr = lay.block_op
    pd_l: gl.constexpr = lay.scores_op
    rows = gl.arange(0, BL, layout=gl.SliceLayout(1, blocked))
    cols = gl.arange(0, BD, layout=gl.SliceLayout(0, blocked))
    rows_n = gl.arange(0, BN, layout=gl.SliceLayout(1, blocked))
    q_s = gl.allocate_shared_memory(gl.bfloat16, [BL, BD], op_l,
                                    gl.load(q_ptr + pid * BL * BD + rows[:, None] * BD + cols[None, :]))
    do_s = gl.allocate_shared_memory(gl.bfloat16, [BL, BD], op_l,
                                     gl.load(do_ptr + pid * BL * BD + rows[:, None] * BD + cols[None, :]))
    mu_s = gl.allocate_shared_memory(gl.bfloat16, [BN, BD], blk_l)
    muv_s = gl.allocate_shared_memory(gl.bfloat16, [BN, BD], blk_l)
    p_s = gl.allocate_shared_memory(gl.bfloat16, [BL, BN], pd_l)
    ds_s = gl.allocate_shared_memory(gl.bfloat16, [BL, BN], pd_l)
    zero_g = gl.zeros([BN, BD], gl.float32, accg_l)
    g_rows = gl.arange(0, BN, layout=gl.SliceLayout(1, accg_l))
    g_cols = gl.arange(0, BD, layout=gl.SliceLayout(0, accg_l))
    g_l: gl.constexpr = lay.g
    if SHARED_K:
        gk_s = gl.allocate_shared_memory(gl.float32, [RES, BN, BD], g_l)
        for b in gl.static_range(RES):
            gk_s.index(b).store(zero_g)
    if SHARED_V:
        gv_s = gl.allocate_shared_memory(gl.float32, [RES, BN, BD], g_l)
        for b in gl.static_range(RES):
            gv_s.index(b).store(zero_g)
    acc_rows = gl.arange(0, BL, layout=gl.SliceLayout(1, acc_l))
    acc_cols = gl.arange(0, BN, layout=gl.SliceLayout(0, acc_l))
    lse2 = gl.load(lse_ptr + pid * BL + acc_rows)
    delta = gl.load(delta_ptr + pid * BL + acc_rows)
    zero = gl.zeros([BL, BN], gl.float32, acc_l)
    dq = gl.zeros([BL, BD], gl.float32, dq_l)
    # the first block's operands, loaded ahead
    mu = gl.load(mu_ptr + rows_n[:, None] * BD + cols[None, :])
    muv = gl.load(muv_ptr + rows_n[:, None] * BD + cols[None, :])
    for j in range(0, NBLK):
        stage_operands(mu_s, muv_s, mu, muv)
        logits, dp = read_products(q_s, do_s, mu_s, muv_s, zero)
        # the next block's loads go out while the products run
        nxt = gl.minimum(j + 1, NBLK - 1) * BN + rows_n
        mu_next = gl.load(mu_ptr + nxt[:, None] * BD + cols[None, :])
        muv_next = gl.load(muv_ptr + nxt[:, None] * BD + cols[None, :])
        off = gl.load(off_ptr + j * BN + acc_cols)
        gk_old = gk_s.index(j % RES).load(accg_l) if SHARED_K else zero_g
        gv_old = gv_s.index(j % RES).load(accg_l) if SHARED_V else zero_g
        store_scores(logits, dp, off, lse2, delta, p_s, ds_s)
        dq, gk, gv = gradient_products(q_s, do_s, mu_s, p_s, ds_s, dq, gk_old, gv_old)
        g = (pid * NBLK + j) * BN + g_rows
        if SHARED_K:
            gk_s.index(j % RES).store(gk)
        else:
            gl.atomic_add(gk_ptr + g[:, None] * BD + g_cols[None, :], gk, sem="relaxed")
        if SHARED_V:
            gv_s.index(j % RES).store(gv)
        else:
            gl.atomic_add(gv_ptr + g[:, None] * BD + g_cols[None, :], gv, sem="relaxed")
        mu = mu_next
        muv = muv_next
    if SHARED_V:
        for b in gl.static_range(RES):
            r = (pid * RES + b) * BN + g_rows
            if SHARED_K:
                gl.store(gk_ptr + r[:, None] * BD + g_cols[None, :], gk_s.index(b).load(accg_l))
            gl.store(gv_ptr + r[:, None] * BD + g_cols[None, :], gv_s.index(b).load(accg_l))
    gl.store(dq_ptr + pid * BL * BD + rows[:, None] * BD + cols[None, :], gl.convert_layout(dq, blocked))


@gluon.jit
def step_gluon(q_ptr, do_ptr, lse_ptr, delta_ptr, mu_ptr, muv_ptr, off_ptr, gk_ptr, gv_ptr, dq_ptr, NBLK,
               BL: gl.constexpr, BN: gl.constexpr, BD: gl.constexpr):
    """``step_triton`` with asynchronous warpgroup products: two in flight for the read, three for the gradients."""
    _step_gluon(q_ptr, do_ptr, lse_ptr, delta_ptr, mu_ptr, muv_ptr, off_ptr, gk_ptr, gv_ptr, dq_ptr, NBLK, BL, BN, BD,
                "global")


@gluon.jit
def shared_g_gluon(q_ptr, do_ptr, lse_ptr, delta_ptr, mu_ptr, muv_ptr, off_ptr, gk_ptr, gv_ptr, dq_ptr, NBLK,
                   BL: gl.constexpr, BN: gl.constexpr, BD: gl.constexpr):
    """``step_gluon`` with the program's G in shared memory instead of float32 atomic adds to global memory: the block
    step of a dictionary backward whose slices keep their G on chip (docs/kernels.md, "Session 16")."""
    _step_gluon(q_ptr, do_ptr, lse_ptr, delta_ptr, mu_ptr, muv_ptr, off_ptr, gk_ptr, gv_ptr, dq_ptr, NBLK, BL, BN, BD,
                "shared")


@gluon.jit
def shared_gv_gluon(q_ptr, do_ptr, lse_ptr, delta_ptr, mu_ptr, muv_ptr, off_ptr, gk_ptr, gv_ptr, dq_ptr, NBLK,
                    BL: gl.constexpr, BN: gl.constexpr, BD: gl.constexpr):
    """``step_gluon`` with the program's G_v for 8 blocks in shared memory and G_k added atomically: the block step of
    a dictionary backward that keeps today's 8 slices (docs/kernels.md, "Session 17")."""
    _step_gluon(q_ptr, do_ptr, lse_ptr, delta_ptr, mu_ptr, muv_ptr, off_ptr, gk_ptr, gv_ptr, dq_ptr, NBLK, BL, BN, BD,
                "shared_v")


@triton.jit
def resident_triton(q_ptr, do_ptr, lse_ptr, delta_ptr, mu_ptr, muv_ptr, off_ptr, gk_ptr, gv_ptr, dq_ptr, NBLK,
                    BL: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
    """The candidate backward's step (docs/kernels.md, "What the targets ask of the hardware"): a program keeps one
    block of BN centroids and its gradient accumulators G on chip and walks NBLK chunks (here all programs walk the
    same ones), adding each chunk's dq share atomically instead of G's. Without the rewinds and the merged tokens'
    gathers the real one needs."""
    pid = tl.program_id(0)
    rows = tl.arange(0, BL)
    cols = tl.arange(0, BD)
    n = pid * BN + tl.arange(0, BN)
    mu = tl.load(mu_ptr + n[:, None] * BD + cols[None, :])
    muv = tl.load(muv_ptr + n[:, None] * BD + cols[None, :])
    off = tl.load(off_ptr + n)
    gk = tl.zeros([BN, BD], tl.float32)
    gv = tl.zeros([BN, BD], tl.float32)
    for c in range(0, NBLK):
        t = c * BL + rows
        q = tl.load(q_ptr + t[:, None] * BD + cols[None, :])
        do = tl.load(do_ptr + t[:, None] * BD + cols[None, :])
        lse2 = tl.load(lse_ptr + t)
        delta = tl.load(delta_ptr + t)
        p = tl.exp2(tl.dot(q, tl.trans(mu)) + off[None, :] - lse2[:, None])
        ds = p * (tl.dot(do, tl.trans(muv)) - delta[:, None])
        tl.atomic_add(dq_ptr + t[:, None] * BD + cols[None, :], tl.dot(ds.to(tl.bfloat16), mu), sem="relaxed")
        gk = tl.dot(tl.trans(ds.to(tl.bfloat16)), q, gk)
        gv = tl.dot(tl.trans(p.to(tl.bfloat16)), do, gv)
    tl.store(gk_ptr + n[:, None] * BD + cols[None, :], gk)
    tl.store(gv_ptr + n[:, None] * BD + cols[None, :], gv)


@gluon.jit
def resident_gluon(q_ptr, do_ptr, lse_ptr, delta_ptr, mu_ptr, muv_ptr, off_ptr, gk_ptr, gv_ptr, dq_ptr, NBLK,
                   BL: gl.constexpr, BN: gl.constexpr, BD: gl.constexpr):
    """``resident_triton`` with asynchronous warpgroup products (the read's two together, then dq's and the two
    accumulating into G together) and the next chunk's loads issued behind the first two."""
    W: gl.constexpr = gl.num_warps()
    pid = gl.program_id(0)
    lay: gl.constexpr = block_step_layouts(W, BL, BN, BD, gl.bfloat16)
    blocked: gl.constexpr = lay.blocked
    acc_l: gl.constexpr = lay.read
    dq_l: gl.constexpr = lay.dq
    accg_l: gl.constexpr = lay.grad
    op_l: gl.constexpr = lay.chunk_op
    blk_l: gl.constexpr = lay.block_op
    pd_l: gl.constexpr = lay.scores_op
    rows = gl.arange(0, BL, layout=gl.SliceLayout(1, blocked))
    cols = gl.arange(0, BD, layout=gl.SliceLayout(0, blocked))
    n = pid * BN + gl.arange(0, BN, layout=gl.SliceLayout(1, blocked))
    mu_s = gl.allocate_shared_memory(gl.bfloat16, [BN, BD], blk_l, gl.load(mu_ptr + n[:, None] * BD + cols[None, :]))
    muv_s = gl.allocate_shared_memory(gl.bfloat16, [BN, BD], blk_l,
                                      gl.load(muv_ptr + n[:, None] * BD + cols[None, :]))
    q_s = gl.allocate_shared_memory(gl.bfloat16, [BL, BD], op_l)
    do_s = gl.allocate_shared_memory(gl.bfloat16, [BL, BD], op_l)
    p_s = gl.allocate_shared_memory(gl.bfloat16, [BL, BN], pd_l)
    ds_s = gl.allocate_shared_memory(gl.bfloat16, [BL, BN], pd_l)
    acc_rows = gl.arange(0, BL, layout=gl.SliceLayout(1, acc_l))
    off = gl.load(off_ptr + pid * BN + gl.arange(0, BN, layout=gl.SliceLayout(0, acc_l)))
    dq_rows = gl.arange(0, BL, layout=gl.SliceLayout(1, dq_l))
    dq_cols = gl.arange(0, BD, layout=gl.SliceLayout(0, dq_l))
    zero = gl.zeros([BL, BN], gl.float32, acc_l)
    zero_dq = gl.zeros([BL, BD], gl.float32, dq_l)
    gk = gl.zeros([BN, BD], gl.float32, accg_l)
    gv = gl.zeros([BN, BD], gl.float32, accg_l)
    # the first chunk's rows, loaded ahead
    q = gl.load(q_ptr + rows[:, None] * BD + cols[None, :])
    do = gl.load(do_ptr + rows[:, None] * BD + cols[None, :])
    for c in range(0, NBLK):
        stage_operands(q_s, do_s, q, do)
        logits, dp = read_products(q_s, do_s, mu_s, muv_s, zero)
        # the next chunk's loads go out while the products run
        t_next = gl.minimum(c + 1, NBLK - 1) * BL + rows
        q = gl.load(q_ptr + t_next[:, None] * BD + cols[None, :])
        do = gl.load(do_ptr + t_next[:, None] * BD + cols[None, :])
        lse2 = gl.load(lse_ptr + c * BL + acc_rows)
        delta = gl.load(delta_ptr + c * BL + acc_rows)
        store_scores(logits, dp, off, lse2, delta, p_s, ds_s)
        dq, gk, gv = gradient_products(q_s, do_s, mu_s, p_s, ds_s, zero_dq, gk, gv)
        t = c * BL + dq_rows
        gl.atomic_add(dq_ptr + t[:, None] * BD + dq_cols[None, :], dq, sem="relaxed")
    g_rows = pid * BN + gl.arange(0, BN, layout=gl.SliceLayout(1, accg_l))
    g_cols = gl.arange(0, BD, layout=gl.SliceLayout(0, accg_l))
    gl.store(gk_ptr + g_rows[:, None] * BD + g_cols[None, :], gk)
    gl.store(gv_ptr + g_rows[:, None] * BD + g_cols[None, :], gv)

SIGNATURE = {"q_ptr": "*bf16", "do_ptr": "*bf16", "lse_ptr": "*fp32", "delta_ptr": "*fp32", "mu_ptr": "*bf16",
             "muv_ptr": "*bf16", "off_ptr": "*fp32", "gk_ptr": "*fp32", "gv_ptr": "*fp32", "dq_ptr": "*fp32",
             "NBLK": "i32", "BL": "constexpr", "BN": "constexpr", "BD": "constexpr"}
TILES = {"BL": 128, "BN": 64, "BD": 64}  # the op's at L = 128, D = 64
NUM_WARPS = 8
# design -> implementation -> kernel: "step" walks blocks of centroids for one chunk (the op's loop), "resident" walks
# chunks for one block of centroids (the candidate), "shared_g" is the step with G in shared memory; each iteration
# is one (block, chunk) pair in all
KERNELS = {"step": {"triton": step_triton, "gluon": step_gluon},
           "resident": {"triton": resident_triton, "gluon": resident_gluon},
           "shared_g": {"gluon": shared_g_gluon}, "shared_gv": {"gluon": shared_gv_gluon}}
# A design without a Triton kernel (Triton cannot index shared memory) is checked against, and its compiled counts held
# to, the Triton kernel of this one
TRITON_TWIN_OF = {"shared_g": "step", "shared_gv": "step"}
# ... and keeps these of the step's G in shared memory, for this many blocks (iteration j adds to block j % blocks)
SHARED_G_OF = {"shared_g": (("G_k", "G_v"), SHARED_G_BLOCKS.value), "shared_gv": (("G_v",), SHARED_GV_BLOCKS.value)}
# (block, chunk) pairs per SM in the 64K dictionary backward (512 chunks x 64 blocks x 16 heads over 132 SMs), to put
# a per-iteration time beside the op's (23.7 ms at 64K in session 14, ~6 us per pair with its per-chunk work)
PAIRS_PER_SM_64K = 512 * 64 * 16 / 132


def compile_counts(capability: int = 90) -> dict:
    """Compile every kernel for ``capability`` (no GPU needed) and count, in their PTX, the warpgroup products, the
    waits for them and the CTA barriers, with the shared memory each takes: {design: {implementation: counts}}."""
    target = GPUTarget("cuda", capability, 32)
    counts = {}
    for design, kernels in KERNELS.items():
        for name, kernel in kernels.items():
            source = (GluonASTSource if name == "gluon" else ASTSource)(kernel, SIGNATURE, TILES)
            compiled = triton.compile(source, target=target, options={"num_warps": NUM_WARPS, "num_stages": 2})
            ptx = compiled.asm["ptx"]
            counts.setdefault(design, {})[name] = {
                "wgmma": ptx.count("wgmma.mma_async"), "wgmma_waits": ptx.count("wgmma.wait_group"),
                "bar_sync": ptx.count("bar.sync"), "shared_bytes": compiled.metadata.shared}
    return counts


def _inputs(programs: int, iterations: int, device: str = "cuda") -> dict:
    """Rows for either design: q, dO, lse and delta for max(programs, iterations) chunks, directions, value means and
    offsets for as many blocks (the step reads chunk ``pid`` and blocks 0.., the resident chunks 0.. and block
    ``pid``)."""
    bl, bn, bd = TILES["BL"], TILES["BN"], TILES["BD"]
    count = max(programs, iterations)
    g = torch.Generator(device=device).manual_seed(0)

    def unit(*shape):
        return torch.nn.functional.normalize(torch.randn(*shape, device=device, generator=g), dim=-1)
    return dict(q=(unit(count * bl, bd) * 12 * 1.4426950408889634).bfloat16(),
                do=torch.randn(count * bl, bd, device=device, generator=g).bfloat16(),
                lse=torch.full((count * bl,), 30.0, device=device),
                delta=torch.randn(count * bl, device=device, generator=g),
                mu=unit(count * bn, bd).bfloat16(),
                muv=torch.randn(count * bn, bd, device=device, generator=g).bfloat16(),
                off=torch.rand(count * bn, device=device, generator=g) * 3)


def run_kernel(kernel, x: dict, programs: int, iterations: int) -> tuple:
    """One launch: returns (dq, G_k, G_v) and the launcher, for timing."""
    bl, bn, bd = TILES["BL"], TILES["BN"], TILES["BD"]
    blocks = max(iterations, *(res for _, res in SHARED_G_OF.values()))
    gk = torch.zeros(programs * blocks * bn, bd, device=x["q"].device)
    gv = torch.zeros_like(gk)
    dq = torch.zeros(max(programs, iterations) * bl, bd, device=x["q"].device)

    def launch():
        kernel[(programs,)](x["q"], x["do"], x["lse"], x["delta"], x["mu"], x["muv"], x["off"], gk, gv, dq, iterations,
                            **TILES, num_warps=NUM_WARPS)
    launch()
    torch.cuda.synchronize()
    return (dq.clone(), gk.clone(), gv.clone()), launch


def _shared_g_reference(design: str, step: tuple, programs: int, iterations: int) -> tuple:
    """What a design of SHARED_G_OF must return, from the step's (dq, G_k, G_v): the same dq, and each program's G
    that it keeps in shared memory, of the blocks j summed over the j that share a block there (j % blocks); the
    G it adds atomically as the step's."""
    dq, gk, gv = step
    shared, res = SHARED_G_OF[design]
    bn, bd = TILES["BN"], TILES["BD"]
    slot = torch.arange(iterations, device=gk.device) % res

    def fold(g):  # into rows (pid * res + b) * bn of a buffer as long as run_kernel's
        per_block = g[:programs * iterations * bn].view(programs, iterations, bn, bd)
        out = torch.zeros_like(g)
        out[:programs * res * bn] = torch.zeros(programs, res, bn, bd, device=g.device).index_add_(
            1, slot, per_block).reshape(-1, bd)
        return out
    return dq, fold(gk) if "G_k" in shared else gk, fold(gv) if "G_v" in shared else gv


def check_and_time(programs: int = 132, iterations: int = 64, on_row=None) -> dict:
    """Per design, Gluon's kernel against Triton's (relative error of dq, G_k, G_v; dq and, for the step, G are added
    atomically, so their last bits vary; ``shared_g*`` against the step's Triton kernel, ``_shared_g_reference``), then
    every kernel timed (do_bench median) per (block, chunk) iteration; ``on_row(rows)`` after each timing
    (``bench.common.saving_rows``: a run cut short keeps them)."""
    x = _inputs(programs, iterations)
    rows, errors, triton_results = [], {}, {}
    for design, kernels in KERNELS.items():
        results = {}
        for name, kernel in kernels.items():
            results[name], launch = run_kernel(kernel, x, programs, iterations)
            ms = triton.testing.do_bench(launch, warmup=10, rep=100, return_mode="median")
            us = 1e3 * ms / iterations
            rows.append({"design": design, "kernel": name, "programs": programs, "iterations": iterations, "ms": ms,
                         "us_per_iteration": us,
                         "dictionary_backward_64k_ms_at_this_rate": us * PAIRS_PER_SM_64K / 1e3})
            if on_row is not None:
                on_row(rows)
        if "triton" in results:
            triton_results[design] = results["triton"]
        twin = TRITON_TWIN_OF.get(design, design)
        want = (triton_results[design] if twin == design
                else _shared_g_reference(design, triton_results[twin], programs, iterations))
        errors[design] = {part: ((a - b).norm() / b.norm()).item()
                          for part, a, b in zip(("dq", "G_k", "G_v"), results["gluon"], want)}
    return {"rows": rows, "gluon_vs_triton": errors}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compile-only", action="store_true",
                    help="compile every kernel for sm_90 and count; no GPU needed")
    ap.add_argument("--programs", type=int, default=132, help="programs (one per SM on an H200)")
    ap.add_argument("--iterations", type=int, default=64, help="(block, chunk) pairs per program")
    ap.add_argument("--out", default="results/block_step_h200.json")
    args = ap.parse_args(argv)
    for name in ("programs", "iterations"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    payload = {"benchmark": "block_step", "environment": environment(), "tiles": TILES, "num_warps": NUM_WARPS,
               "compiled_sm90": compile_counts()}
    for design, kernels in payload["compiled_sm90"].items():
        for name, c in kernels.items():
            print(f"{design:9s} {name:7s} sm_90: {c['wgmma']} wgmma, {c['wgmma_waits']} waits, {c['bar_sync']} "
                  f"bar.sync, {c['shared_bytes']} B shared", flush=True)
    if args.compile_only:
        return payload
    if not torch.cuda.is_available():
        ap.error("timing needs a CUDA GPU (use --compile-only here)")
    payload.update(check_and_time(args.programs, args.iterations, saving_rows(args.out, payload, "rows")))
    print(f"{'design':9s} {'kernel':7s} {'ms':>8s} {'us/iter':>8s} {'64K bwd ms at this rate':>24s}")
    for row in payload["rows"]:
        print(f"{row['design']:9s} {row['kernel']:7s} {row['ms']:8.3f} {row['us_per_iteration']:8.2f} "
              f"{row['dictionary_backward_64k_ms_at_this_rate']:24.1f}", flush=True)
    for design, errs in payload["gluon_vs_triton"].items():
        twin = TRITON_TWIN_OF.get(design, design)
        against = "triton" if twin == design else f"the {twin}'s triton"
        print(f"gluon vs {against}, {design}:", {k: f"{v:.1e}" for k, v in errs.items()}, flush=True)
    print(f"saved {save_json(args.out, payload)}")
    return payload


if __name__ == "__main__":
    main()
