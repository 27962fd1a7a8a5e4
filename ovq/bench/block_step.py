"""The dictionary backward's block step alone, in Triton and in Gluon: how much overlapping its products could buy.

Why: the dictionary backward (``ovq.ops.kernels.ovq_bwd_dict_kernel``) spends its time in a loop over 64-centroid
blocks that is bound by latency: each of its products is waited for before the next is issued (``tl.dot`` on
Hopper; Triton 3.6's automatic warp specialization is for Blackwell only), at one program per SM. Triton's
experimental Gluon dialect issues Hopper's warpgroup products asynchronously and waits where told. This module
holds the loop's step twice, on synthetic data with the same five products and the same float32 gradient atomics:
- ``step_triton``: as the op's kernel writes it (every product waited for);
- ``step_gluon``: the read's two products (q mu^T, dO muv^T) in flight together, the next block's loads issued
  behind them, then the three gradient products (ds mu into dq, ds^T q and p^T dO into the accumulators G) together.

Per program: one chunk's q, dO ([BL, BD], bf16, q carrying beta log2 e), base-2 lse and the row term delta; NBLK
blocks of BN unit directions and value means (bf16) with base-2 logit offsets. Not the op: no rewind, no count or
normalization work; the blocks' rows are shared by all programs.

Usage:
  python -m ovq.bench.block_step --compile-only   # any machine: compile both for sm_90, count products and waits
  python -m ovq.bench.block_step                  # a GPU: check Gluon against Triton, then time both (JSON)

Status (session 15): both compile for sm_90 (28 ``wgmma.mma_async`` each; waits 5 vs 2, ``bar.sync`` 12 vs 7); the
GPU run, which checks the Gluon layouts and operand permutes against the Triton step, has not happened yet.
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
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma, warpgroup_mma_wait

from .common import environment, save_json


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


@gluon.jit
def step_gluon(q_ptr, do_ptr, lse_ptr, delta_ptr, mu_ptr, muv_ptr, off_ptr, gk_ptr, gv_ptr, dq_ptr, NBLK,
               BL: gl.constexpr, BN: gl.constexpr, BD: gl.constexpr):
    """The same step with asynchronous warpgroup products: two in flight for the read, three for the gradients."""
    W: gl.constexpr = gl.num_warps()
    pid = gl.program_id(0)
    blocked: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [W, 1], [1, 0])
    acc_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[W, 1], instr_shape=[16, BN, 16])
    accg_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, W // 4],
                                                      instr_shape=[16, BD // (W // 4), 16])
    op_l: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BL, BD], gl.bfloat16)
    blk_l: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BN, BD], gl.bfloat16)
    pd_l: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BL, BN], gl.bfloat16)
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
    acc_rows = gl.arange(0, BL, layout=gl.SliceLayout(1, acc_l))
    acc_cols = gl.arange(0, BN, layout=gl.SliceLayout(0, acc_l))
    lse2 = gl.load(lse_ptr + pid * BL + acc_rows)
    delta = gl.load(delta_ptr + pid * BL + acc_rows)
    zero = gl.zeros([BL, BN], gl.float32, acc_l)
    zero_g = gl.zeros([BN, BD], gl.float32, accg_l)
    dq = gl.zeros([BL, BD], gl.float32, gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[W, 1],
                                                                   instr_shape=[16, BD, 16]))
    g_rows = gl.arange(0, BN, layout=gl.SliceLayout(1, accg_l))
    g_cols = gl.arange(0, BD, layout=gl.SliceLayout(0, accg_l))
    # the first block's operands, loaded ahead
    mu = gl.load(mu_ptr + rows_n[:, None] * BD + cols[None, :])
    muv = gl.load(muv_ptr + rows_n[:, None] * BD + cols[None, :])
    for j in range(0, NBLK):
        gl.thread_barrier()  # every warp is done with the last block's operands
        mu_s.store(mu)
        muv_s.store(muv)
        fence_async_shared()
        gl.thread_barrier()
        logits = warpgroup_mma(q_s, mu_s.permute([1, 0]), zero, is_async=True)
        dp = warpgroup_mma(do_s, muv_s.permute([1, 0]), zero, is_async=True)
        # the next block's loads go out while the products run
        nxt = gl.minimum(j + 1, NBLK - 1) * BN + rows_n
        mu_next = gl.load(mu_ptr + nxt[:, None] * BD + cols[None, :])
        muv_next = gl.load(muv_ptr + nxt[:, None] * BD + cols[None, :])
        off = gl.load(off_ptr + j * BN + acc_cols)
        logits, dp = warpgroup_mma_wait(0, deps=[logits, dp])
        p = gl.exp2(logits + off[None, :] - lse2[:, None])
        ds = p * (dp - delta[:, None])
        p_s.store(p.to(gl.bfloat16))
        ds_s.store(ds.to(gl.bfloat16))
        fence_async_shared()
        gl.thread_barrier()
        dq = warpgroup_mma(ds_s, mu_s, dq, is_async=True)
        dmu = warpgroup_mma(ds_s.permute([1, 0]), q_s, zero_g, is_async=True)
        dsv = warpgroup_mma(p_s.permute([1, 0]), do_s, zero_g, is_async=True)
        dq, dmu, dsv = warpgroup_mma_wait(0, deps=[dq, dmu, dsv])
        g = (pid * NBLK + j) * BN + g_rows
        gl.atomic_add(gk_ptr + g[:, None] * BD + g_cols[None, :], dmu, sem="relaxed")
        gl.atomic_add(gv_ptr + g[:, None] * BD + g_cols[None, :], dsv, sem="relaxed")
        mu = mu_next
        muv = muv_next
    gl.store(dq_ptr + pid * BL * BD + rows[:, None] * BD + cols[None, :], gl.convert_layout(dq, blocked))


SIGNATURE = {"q_ptr": "*bf16", "do_ptr": "*bf16", "lse_ptr": "*fp32", "delta_ptr": "*fp32", "mu_ptr": "*bf16",
             "muv_ptr": "*bf16", "off_ptr": "*fp32", "gk_ptr": "*fp32", "gv_ptr": "*fp32", "dq_ptr": "*fp32",
             "NBLK": "i32", "BL": "constexpr", "BN": "constexpr", "BD": "constexpr"}
TILES = {"BL": 128, "BN": 64, "BD": 64}  # the op's at L = 128, D = 64
NUM_WARPS = 8
KERNELS = {"triton": step_triton, "gluon": step_gluon}


def compile_counts(capability: int = 90) -> dict:
    """Compile both steps for ``capability`` (no GPU needed) and count, in their PTX, the warpgroup products, the
    waits for them and the CTA barriers, with the shared memory each takes."""
    target = GPUTarget("cuda", capability, 32)
    counts = {}
    for name, kernel in KERNELS.items():
        source = (GluonASTSource if name == "gluon" else ASTSource)(kernel, SIGNATURE, TILES)
        compiled = triton.compile(source, target=target, options={"num_warps": NUM_WARPS, "num_stages": 2})
        ptx = compiled.asm["ptx"]
        counts[name] = {"wgmma": ptx.count("wgmma.mma_async"), "wgmma_waits": ptx.count("wgmma.wait_group"),
                        "bar_sync": ptx.count("bar.sync"), "shared_bytes": compiled.metadata.shared}
    return counts


def _inputs(programs: int, blocks: int, device: str = "cuda") -> dict:
    bl, bn, bd = TILES["BL"], TILES["BN"], TILES["BD"]
    g = torch.Generator(device=device).manual_seed(0)

    def unit(*shape):
        return torch.nn.functional.normalize(torch.randn(*shape, device=device, generator=g), dim=-1)
    return dict(q=(unit(programs, bl, bd) * 12 * 1.4426950408889634).bfloat16(),
                do=torch.randn(programs, bl, bd, device=device, generator=g).bfloat16(),
                lse=torch.full((programs, bl), 30.0, device=device),
                delta=torch.randn(programs, bl, device=device, generator=g),
                mu=unit(blocks * bn, bd).bfloat16(),
                muv=torch.randn(blocks * bn, bd, device=device, generator=g).bfloat16(),
                off=torch.rand(blocks * bn, device=device, generator=g) * 3)


def run_step(name: str, x: dict, programs: int, blocks: int) -> tuple:
    """One launch of step ``name``: returns (dq, G_k, G_v) and the launcher, for timing."""
    rows = programs * blocks * TILES["BN"]
    gk = torch.zeros(rows, TILES["BD"], device=x["q"].device)
    gv = torch.zeros_like(gk)
    dq = torch.empty(programs, TILES["BL"], TILES["BD"], device=x["q"].device)

    def launch():
        KERNELS[name][(programs,)](x["q"], x["do"], x["lse"], x["delta"], x["mu"], x["muv"], x["off"], gk, gv, dq,
                                   blocks, **TILES, num_warps=NUM_WARPS)
    launch()
    torch.cuda.synchronize()
    return (dq.clone(), gk.clone(), gv.clone()), launch


def check_and_time(programs: int = 132, blocks: int = 64) -> dict:
    """Gluon's step against Triton's (relative error of dq, G_k, G_v), then both timed (do_bench median)."""
    x = _inputs(programs, blocks)
    results, rows = {}, []
    for name in KERNELS:
        results[name], launch = run_step(name, x, programs, blocks)
        ms = triton.testing.do_bench(launch, warmup=10, rep=100, return_mode="median")
        rows.append({"step": name, "programs": programs, "blocks": blocks, "ms": ms, "us_per_block": 1e3 * ms / blocks})
    rel = {part: ((a - b).norm() / b.norm()).item()
           for part, a, b in zip(("dq", "G_k", "G_v"), results["gluon"], results["triton"])}
    return {"rows": rows, "gluon_vs_triton": rel}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compile-only", action="store_true", help="compile both for sm_90 and count; no GPU needed")
    ap.add_argument("--programs", type=int, default=132, help="programs (one per SM on an H200)")
    ap.add_argument("--blocks", type=int, default=64, help="centroid blocks per program")
    ap.add_argument("--out", default="results/block_step_h200.json")
    args = ap.parse_args(argv)
    payload = {"benchmark": "block_step", "environment": environment(), "tiles": TILES, "num_warps": NUM_WARPS,
               "compiled_sm90": compile_counts()}
    for name, c in payload["compiled_sm90"].items():
        print(f"{name:7s} sm_90: {c['wgmma']} wgmma, {c['wgmma_waits']} waits, {c['bar_sync']} bar.sync, "
              f"{c['shared_bytes']} B shared", flush=True)
    if args.compile_only:
        return payload
    if not torch.cuda.is_available():
        ap.error("timing needs a CUDA GPU (use --compile-only here)")
    payload.update(check_and_time(args.programs, args.blocks))
    for row in payload["rows"]:
        print(f"{row['step']:7s} {row['ms']:8.3f} ms  {row['us_per_block']:6.2f} us per block", flush=True)
    print("gluon vs triton:", {k: f"{v:.1e}" for k, v in payload["gluon_vs_triton"].items()}, flush=True)
    print(f"saved {save_json(args.out, payload)}")
    return payload


if __name__ == "__main__":
    main()
