"""Tuning tool: times the Triton kernels' launch variants on the GPU (not the public benchmark).

    python -m ovq.bench.kernels            # forward / backward variants at T = 4K and 64K, D = 64, N = 4096
    python -m ovq.bench.kernels --configs 1x65536 --variants gluon_bwd   # the Gluon dictionary backward, A/B

For each variant: median ms (CUDA events via do_bench), registers and spills of the compiled kernel.
"""

from __future__ import annotations

import argparse
import itertools
import os

import torch

from ..ops import ovq_attention
from ..ops import triton_chunk as tc
from .common import environment, save_json, saving_rows


def _time(fn) -> float:
    import triton.testing
    return triton.testing.do_bench(fn, warmup=20, rep=100, return_mode="median")


def _show(row: dict) -> None:
    """Print a measured row and hand it to :data:`_progress` (``main`` saves every row so far with it, so a run
    stopped at its time limit keeps what it measured)."""
    print(row, flush=True)
    _progress(row)


_progress = lambda row: None  # noqa: E731 - main replaces it while it runs


def _compiled(kernel) -> list:
    """The compiled specializations of a Triton kernel on the current device, in compile order."""
    return list(kernel.device_caches[torch.cuda.current_device()][0].values())


def _compiled_info(kernel) -> dict:
    """Registers/spills of the most recently compiled specialization of a Triton kernel."""
    try:
        compiled = _compiled(kernel)[-1]
        return {"regs": compiled.n_regs, "spills": compiled.n_spills, "shared": compiled.metadata.shared}
    except Exception as e:  # noqa: BLE001 - the cache layout is Triton-internal; report instead of failing
        return {"info_error": repr(e)[:80]}


def _launch_resources(kernel, warps: int, stages: int) -> dict:
    """The most registers and shared memory any compiled specialization launched with (warps, stages)
    needs: a bound for the residency check whatever its constexprs (the last compiled may be another
    variant, e.g. another precision)."""
    try:
        same = [c for c in _compiled(kernel) if (c.metadata.num_warps, c.metadata.num_stages) == (warps, stages)]
    except Exception as e:  # noqa: BLE001 - Triton-internal layout, as above
        return {"info_error": repr(e)[:80]}
    if not same:
        return {"info_error": f"no specialization compiled with {warps} warps, {stages} stages"}
    return {"regs": max(c.n_regs for c in same), "shared": max(c.metadata.shared for c in same)}


def _resident_per_sm(info: dict, warps: int) -> int:
    """Programs of a compiled kernel that fit on one SM at once (registers and shared memory), or 0."""
    if "regs" not in info:
        return 0
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    regs_per_sm = getattr(props, "regs_per_multiprocessor", 65536)
    smem_per_sm = getattr(props, "shared_memory_per_multiprocessor", 0)
    regs = -(-max(info["regs"], 1) // 8) * 8 * 32 * warps       # allocated per warp in units of 256
    by_regs = regs_per_sm // regs
    by_smem = smem_per_sm // (info["shared"] + 1024) if smem_per_sm else 0  # 1 KiB reserved per block
    return min(by_regs, by_smem)


def _two_programs_per_sm(b: int, t: int, h: int, n: int, fwd, kernel) -> list[dict]:
    """The forward with twice the slices (2 programs per SM), only when 2 are certain to be resident
    (the slices spin-wait on each other: a program that cannot start would hang them)."""
    fwd()  # compile the default launch (if not yet) and read its resources
    warps, stages = tc.launch_settings("fwd", 64)
    info = _launch_resources(kernel, warps, stages)
    resident = _resident_per_sm(info, warps)
    row = {"B": b, "T": t, "kernel": "fwd_2_per_sm", "resident_per_sm": resident} | info
    if resident < 2:
        row["skipped"] = "2 programs per SM do not fit"
        _show(row)
        return [row]
    tc.FWD_PROGRAMS_PER_SM = 2
    try:
        row |= {"slices": tc._slices(b * h, n, torch.device("cuda"))[0], "ms": _time(fwd)}
    finally:
        tc.FWD_PROGRAMS_PER_SM = 1
    row["slices_default"] = tc._slices(b * h, n, torch.device("cuda"))[0]
    _show(row)
    return [row]


def _forward_variants(b: int, t: int, fwd, fwd_bwd, q, k, v, n: int, kernel) -> list[dict]:
    """Forward variants that compute the same function: cached operands (``FWD_CACHED_OPERANDS``), the
    read and the assignment in two loops (``FWD_TWO_PASS``), centroid blocks of 32/128 slots. Each is first
    checked against the default forward on these inputs (outputs, counts), then timed."""
    def run():
        with torch.no_grad():
            return ovq_attention(q, k, v, 12.0, chunk_size=64, max_centroids=n, output_final_state=True)
    o_ref, s_ref = run()
    rows = []
    before = tc.BLOCK_CENTROIDS, tc.FWD_CACHED_OPERANDS, tc.FWD_TWO_PASS, tc.LAUNCH["fwd"]
    try:
        for bn, cached, two_pass, warps in ((64, True, False, 4), (64, True, True, 4), (64, False, True, 4),
                                            (64, True, True, 8), (128, True, True, 4), (128, True, True, 8),
                                            (128, True, False, 4), (32, True, True, 4)):
            tc.BLOCK_CENTROIDS, tc.FWD_CACHED_OPERANDS, tc.FWD_TWO_PASS = bn, cached, two_pass
            tc.LAUNCH["fwd"] = {1: (warps, 2)}
            o, st = run()
            rows.append({"B": b, "T": t, "kernel": "fwd_variant", "BN": bn, "cached": cached, "two_pass": two_pass,
                         "warps": warps,
                         "max_abs_diff_o": (o.float() - o_ref.float()).abs().max().item(),
                         "count_slots_differing": int((st.count != s_ref.count).sum().item()), "ms": _time(fwd)}
                        | _compiled_info(kernel))
            _show(rows[-1])
        best = min(rows, key=lambda r: r["ms"])
        tc.BLOCK_CENTROIDS, tc.FWD_CACHED_OPERANDS, tc.FWD_TWO_PASS = best["BN"], best["cached"], best["two_pass"]
        tc.LAUNCH["fwd"] = {1: (best["warps"], 2)}
        rows.append({"B": b, "T": t, "kernel": "fwd+bwd_best_forward", "BN": best["BN"], "cached": best["cached"],
                     "two_pass": best["two_pass"], "warps": best["warps"], "ms": _time(fwd_bwd)})
        _show(rows[-1])
    finally:
        tc.BLOCK_CENTROIDS, tc.FWD_CACHED_OPERANDS, tc.FWD_TWO_PASS, tc.LAUNCH["fwd"] = before
    return rows


def _chunk_sizes(b: int, t: int, q, k, v, n: int, kernel) -> list[dict]:
    """The forward at chunk sizes L = 64 to 512 (a deployment knob: L = 256 lifts 64K recall) with 4 and 8
    warps (the launcher takes 8 from L = 128 on, from this table: results/kernel_variants_s6_h200.json), then
    the forward with the other operand setting (``FWD_CACHED_OPERANDS`` flipped) at L = 64 to 256, checked against
    the default forward at that L, then forward +
    backward at L = 64 to 256 with the backward kernels at 4 and 8 warps (L = 512's backward does not fit).
    L = 512 loads the forward with one pipeline stage (the launcher's retry)."""
    rows, before, cached_before = [], dict(tc.LAUNCH), tc.FWD_CACHED_OPERANDS
    grad = torch.randn_like(q)
    try:
        for chunk, warps in itertools.product((64, 128, 256, 512), (4, 8)):
            tc.LAUNCH["fwd"] = {1: (warps, 2)}

            def fwd():
                with torch.no_grad():
                    ovq_attention(q, k, v, 12.0, chunk_size=chunk, max_centroids=n)
            rows.append({"B": b, "T": t, "kernel": "fwd_chunk", "L": chunk, "warps": warps, "ms": _time(fwd)}
                        | _compiled_info(kernel))
            _show(rows[-1])
        tc.LAUNCH["fwd"] = before["fwd"]
        for chunk in (64, 128, 256):  # the other operand setting at the launcher's warps
            def run():
                with torch.no_grad():
                    return ovq_attention(q, k, v, 12.0, chunk_size=chunk, max_centroids=n, output_final_state=True)
            o_ref, s_ref = run()
            tc.FWD_CACHED_OPERANDS = not cached_before
            try:
                o, st = run()
                rows.append({"B": b, "T": t, "kernel": "fwd_chunk_" + ("uncached", "cached")[tc.FWD_CACHED_OPERANDS],
                             "L": chunk,
                             "warps": tc.launch_settings("fwd", chunk)[0],
                             "max_abs_diff_o": (o.float() - o_ref.float()).abs().max().item(),
                             "count_slots_differing": int((st.count != s_ref.count).sum().item()),
                             "ms": _time(run)} | _compiled_info(kernel))
            finally:
                tc.FWD_CACHED_OPERANDS = cached_before
            _show(rows[-1])
        for chunk, warps in itertools.product((64, 128, 256), (4, 8)):
            tc.LAUNCH["bwd_local"], tc.LAUNCH["bwd_dict"] = {1: (warps, 1)}, {1: (warps, 2)}

            def fwd_bwd():
                ovq_attention(q, k, v, 12.0, chunk_size=chunk, max_centroids=n, backend="triton")[0].backward(grad)
            row = {"B": b, "T": t, "kernel": "fwd+bwd_chunk", "L": chunk,
                   "fwd_warps": tc.launch_settings("fwd", chunk)[0], "bwd_warps": warps}
            try:
                row["ms"] = _time(fwd_bwd)
            except tc.KernelResourceError as e:  # recorded, not fatal: the table says which L trains on the kernels
                row["error"] = str(e)[:200]
            rows.append(row)
            _show(rows[-1])
    finally:
        tc.LAUNCH.update(before)
    return rows


def _gluon_backward(b: int, t: int, q, k, v, n: int, grad) -> None:
    """fwd+bwd at the models' chunk size 128 with the dictionary backward in Triton and in Gluon (``OVQ_GLUON_BWD``,
    ``ovq.ops.gluon_bwd``), alternated three times. Each Gluon row says whether that kernel ran: outside its scope
    (on an H200, anything but 64K with N = 4,096 here) the flag changes nothing."""
    from .gluon_bwd_parts import counting_gluon_launches

    def fwd_bwd():
        ovq_attention(q, k, v, 12.0, chunk_size=128, max_centroids=n)[0].backward(grad)
    with counting_gluon_launches() as launches:
        for repeat in range(3):
            for flag in ("0", "1"):
                os.environ["OVQ_GLUON_BWD"] = flag
                launches.clear()
                ms = _time(fwd_bwd)
                _show({"B": b, "T": t, "kernel": "fwd+bwd", "chunk_size": 128, "gluon_bwd": flag == "1",
                       "gluon_ran": bool(launches), "repeat": repeat, "ms": ms})


VARIANTS = ("launch", "2persm", "nopicks", "bwd", "forward", "chunk", "gluon_bwd")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/kernel_variants.json")
    ap.add_argument("--configs", default="16x4096,1x65536")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma-separated subset of {VARIANTS} (the default forward is always timed)")
    args = ap.parse_args(argv)
    chosen = set(args.variants.split(","))
    if chosen - set(VARIANTS):
        ap.error(f"--variants: unknown {sorted(chosen - set(VARIANTS))}; known: {VARIANTS}")
    from ..ops import kernels
    global _progress
    rows, launch_defaults, env = [], dict(tc.LAUNCH), environment()  # rows: every row shown, in order
    save_rows = saving_rows(args.out, {"environment": env}, "rows")
    _progress = lambda row: (rows.append(row), save_rows(rows))  # noqa: E731
    try:
        for cfg in args.configs.split(","):
            b, t = (int(x) for x in cfg.split("x"))
            h, d, n = 16, 64, 4096
            q, k, v = (torch.randn(b, t, h, d, device="cuda", dtype=torch.bfloat16).requires_grad_() for _ in range(3))
            grad = torch.randn_like(q)

            def fwd():
                with torch.no_grad():
                    ovq_attention(q, k, v, 12.0, chunk_size=64, max_centroids=n)

            def fwd_bwd():
                ovq_attention(q, k, v, 12.0, chunk_size=64, max_centroids=n)[0].backward(grad)

            for warps, stages, prec in itertools.product((4, 8), (1, 2), ("bf16x3", "tf32x3", "tf32", "bf16")):
                if (prec != "bf16x3" or "launch" not in chosen) and (warps, stages, prec) != (4, 2, "bf16x3"):
                    continue
                tc.LAUNCH["fwd"] = {1: (warps, stages)}
                tc.ASSIGN_PRECISION = prec
                ms = _time(fwd)
                _show({"B": b, "T": t, "kernel": "fwd", "warps": warps, "stages": stages, "assign": prec, "ms": ms}
                      | _compiled_info(kernels.ovq_fwd_kernel))
            tc.LAUNCH["fwd"], tc.ASSIGN_PRECISION = launch_defaults["fwd"], "bf16x3"
            # each variant shows (and so saves) its rows as it measures them
            if "forward" in chosen:
                _forward_variants(b, t, fwd, fwd_bwd, q, k, v, n, kernels.ovq_fwd_kernel)
            if "chunk" in chosen:
                _chunk_sizes(b, t, q, k, v, n, kernels.ovq_fwd_kernel)
            if "2persm" in chosen:
                _two_programs_per_sm(b, t, h, n, fwd, kernels.ovq_fwd_kernel)
            if "gluon_bwd" in chosen:
                _gluon_backward(b, t, q, k, v, n, grad)
            if "nopicks" in chosen:  # without farthest-point picks (timing only: wrong function): the picks' share
                real = tc._schedule
                tc._schedule = lambda *a: tuple((m, 0) for m, _ in real(*a))
                _show({"B": b, "T": t, "kernel": "fwd_no_picks", "ms": _time(fwd)})
                tc._schedule = real
            for warps, stages in itertools.product((4, 8), (1, 2)) if "bwd" in chosen else [(4, 2)]:
                tc.LAUNCH["bwd_dict"] = {1: (warps, stages)}
                ms = _time(fwd_bwd)
                _show({"B": b, "T": t, "kernel": "fwd+bwd", "bwd_warps": warps, "bwd_stages": stages, "ms": ms}
                      | _compiled_info(kernels.ovq_bwd_dict_kernel))
            tc.LAUNCH["bwd_dict"] = launch_defaults["bwd_dict"]
    finally:
        _progress = lambda row: None  # noqa: E731
    save_json(args.out, {"environment": env, "rows": rows})
    for r in rows:
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))


if __name__ == "__main__":
    main()
