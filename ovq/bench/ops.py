"""GPU benchmark of the OVQ kernels against SDPA, fla's Gated DeltaNet and the static-codebook variant.

    python -m ovq.bench.ops --check                  # correctness of the kernels on the GPU first
    python -m ovq.bench.ops                          # the issue's sweep (B·T = 65,536, H = 16, bf16)
    python -m ovq.bench.ops --seq-lens 4096,65536 --head-dims 64 --centroids 4096   # a subset

Every timing is the median of ``triton.testing.do_bench`` (CUDA events) after warm-up. Prints a table
last and saves everything (with GPU, date and commit) as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from ..ops import OVQState, ovq_attention, ovq_step, vq_attention
from ..ops.triton_chunk import _schedule, _slices
from ..ops.utils import growth_target
from .common import (apply_kernel_settings, environment, kernel_settings, relative_error, row_log, save_json, save_unfinished,
                     saving_rows)


def check(device: str = "cuda", dtypes=("float32", "bfloat16"), on_row=None) -> list[dict]:
    """Kernels vs the PyTorch op on the GPU: float32 (tight) and bf16 (stated tolerance), the cases of the given
    ``dtypes``; ``on_row(rows)`` runs after each case (the caller saves them: the whole check takes minutes)."""
    rows = []
    cases = [  # B, T, H, D, L, N, dtype
        (2, 1000, 2, 64, 64, 256, torch.float32),
        (1, 4096, 2, 64, 64, 1024, torch.float32),   # few (b, h): many forward slices + barrier
        (1, 2048, 4, 128, 64, 512, torch.float32),
        (2, 777, 3, 64, 32, 300, torch.float32),
        (2, 4096, 4, 64, 64, 1024, torch.bfloat16),
        (1, 4096, 2, 64, 128, 1024, torch.float32),  # L >= 128: the kernels launch with 8 warps
        (1, 4096, 2, 64, 256, 1024, torch.bfloat16),
        (1, 8192, 2, 64, 64, 4096, torch.bfloat16),  # last: the PyTorch op is slow here
    ]
    for b, t, h, d, chunk, n, dtype in cases:
        if str(dtype).split(".")[-1] not in dtypes:
            continue
        g = torch.Generator(device=device).manual_seed(t)
        q, k, v = (torch.randn(b, t, h, d, device=device, generator=g).to(dtype).requires_grad_() for _ in range(3))
        beta = torch.full((h,), 12.0, device=device, requires_grad=True)
        do = torch.randn(b, t, h, d, device=device, generator=g)
        out = {}
        try:
            for backend in ("torch", "triton"):
                o, st = ovq_attention(q, k, v, beta, chunk_size=chunk, max_centroids=n, output_final_state=True,
                                      backend=backend)
                grads = torch.autograd.grad((o.float() * do).sum(), (q, k, v, beta))
                out[backend] = (o, st, grads)
        except Exception as e:  # noqa: BLE001 - record the failure and check the other cases
            rows.append({"B": b, "T": t, "D": d, "N": n, "dtype": str(dtype), "error": repr(e)[:300]})
            print(rows[-1], flush=True)
            if on_row is not None:
                on_row(rows)
            continue
        (o0, s0, g0), (o1, s1, g1) = out["torch"], out["triton"]
        counts_differ = (s0.count != s1.count).float().mean().item()
        row = {"B": b, "T": t, "H": h, "D": d, "L": chunk, "N": n, "dtype": str(dtype).split(".")[-1],
               "fwd_slices": _slices(b * h, n, torch.device(device))[0],
               "o_rel": relative_error(o1, o0),
               **{f"d{x}_rel": relative_error(a, b) for x, a, b in zip(("q", "k", "v", "beta"), g1, g0)},
               "sum_k_rel": relative_error(s1.sum_k, s0.sum_k), "count_slots_differ": counts_differ,
               "nan": bool(torch.isnan(o1).any())}
        rows.append(row)
        print(" ".join(f"{k_}={v_:.2e}" if isinstance(v_, float) else f"{k_}={v_}" for k_, v_ in row.items()),
              flush=True)
        if on_row is not None:
            on_row(rows)
    return rows


def _bench(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median")


def _fwd_bwd(fn, inputs, grad):
    def run():
        out = fn(*inputs)
        torch.autograd.backward(out, grad)
    return run


def _peak_memory(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _ovq_flops(t: int, b: int, h: int, d: int, chunk: int, n: int, static: bool) -> dict:
    """Arithmetic the kernels must do (multiply-adds x 2) for one (T, N) configuration."""
    rows = _schedule(t, chunk, 0, 0, n, "saturating", 1.0, static)
    read = sum(chunk * m for m, _ in rows)  # (query, centroid) pairs
    local = t * (chunk + 1) / 2
    fwd = 2 * read * (2 * d + (0 if static else d)) + 2 * local * 2 * d  # logits+values (+assignment) + local
    bwd = 2 * read * ((5 if not static else 4) * d) + 2 * local * 5 * d
    return {"fwd": fwd * b * h, "bwd": bwd * b * h, "mean_active": read / t}


def bench(seq_lens, head_dims, centroids, chunk: int, tokens: int, heads: int, peers: list[str],
          on_row=None, detached: bool = False) -> list[dict]:
    """Times every op at every (D, T, N); ``on_row(rows)`` runs after each new row (the caller saves them, so a
    run stopped at a time limit keeps what it measured). ``detached`` adds OVQ and VQ with ``detach_state=True``:
    their difference is the online update's cost without any gradient through the dictionary."""
    rows, add = row_log(on_row)
    device = "cuda"
    dtype = torch.bfloat16
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except ImportError:
        chunk_gated_delta_rule = None
    for d in head_dims:
        for t in seq_lens:
            b = max(1, tokens // t)
            shape = (b, t, heads, d)
            g = torch.Generator(device=device).manual_seed(0)
            q, k, v = (torch.randn(shape, device=device, dtype=dtype, generator=g).requires_grad_() for _ in range(3))
            grad = torch.randn(shape, device=device, dtype=dtype, generator=g)
            common = {"T": t, "B": b, "H": heads, "D": d, "chunk": chunk}
            if "sdpa" in peers:
                def sdpa(q_, k_, v_):
                    return F.scaled_dot_product_attention(q_.transpose(1, 2), k_.transpose(1, 2), v_.transpose(1, 2),
                                                          is_causal=True).transpose(1, 2)
                from torch.nn.attention import SDPBackend, sdpa_kernel
                with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                    with torch.no_grad():
                        fwd = _bench(lambda: sdpa(q, k, v))
                    fb = _bench(_fwd_bwd(sdpa, (q, k, v), grad))
                    mem = _peak_memory(_fwd_bwd(sdpa, (q, k, v), grad))
                add(common | {"op": "sdpa", "backend": "FLASH_ATTENTION", "fwd_ms": fwd, "fwd_bwd_ms": fb,
                               "fwd_bwd_peak_bytes": mem})
            if "gdn" in peers and chunk_gated_delta_rule is not None:
                gate = F.logsigmoid(torch.randn(b, t, heads, device=device, generator=g)).to(dtype).requires_grad_()
                bet = torch.rand(b, t, heads, device=device, generator=g).to(dtype).requires_grad_()

                def gdn(q_, k_, v_):
                    return chunk_gated_delta_rule(q_, k_, v_, gate, bet, use_qk_l2norm_in_kernel=True)[0]
                with torch.no_grad():
                    fwd = _bench(lambda: gdn(q, k, v))
                try:
                    fb = _bench(_fwd_bwd(gdn, (q, k, v), grad))
                    mem = _peak_memory(_fwd_bwd(gdn, (q, k, v), grad))
                    err = None
                except RuntimeError as e:  # fla refuses its gated backward on Hopper + Triton 3.6 without tilelang
                    fb, mem, err = None, None, str(e).splitlines()[0][:160]
                add(common | {"op": "gdn", "backend": "fla chunk", "fwd_ms": fwd, "fwd_bwd_ms": fb,
                               "fwd_bwd_peak_bytes": mem, "error": err})
            for n in centroids:
                codebook = torch.randn(heads, n, d, device=device, generator=g)
                ops = [("ovq", lambda q_, k_, v_: ovq_attention(q_, k_, v_, 12.0, chunk_size=chunk,
                                                               max_centroids=n)[0]),
                       ("vq", lambda q_, k_, v_: vq_attention(q_, k_, v_, 12.0, codebook, chunk_size=chunk)[0])]
                if detached:
                    ops += [("ovq_detached", lambda q_, k_, v_: ovq_attention(
                                q_, k_, v_, 12.0, chunk_size=chunk, max_centroids=n, detach_state=True)[0]),
                            ("vq_detached", lambda q_, k_, v_: vq_attention(
                                q_, k_, v_, 12.0, codebook, chunk_size=chunk, detach_state=True)[0])]
                for op, fn in ops:
                    with torch.no_grad():
                        fwd = _bench(lambda: fn(q, k, v))
                    fb = _bench(_fwd_bwd(fn, (q, k, v), grad))
                    mem = _peak_memory(_fwd_bwd(fn, (q, k, v), grad))
                    flops = _ovq_flops(t, b, heads, d, chunk, n, op == "vq")
                    add(common | {"op": op, "N": n, "fwd_ms": fwd, "fwd_bwd_ms": fb, "fwd_bwd_peak_bytes": mem,
                                   "fwd_tflops": flops["fwd"] / fwd / 1e9,
                                   "fwd_bwd_tflops": (flops["fwd"] + flops["bwd"]) / fb / 1e9,
                                   "mean_active_centroids": flops["mean_active"],
                                   "slices": _slices(b * heads, n, torch.device(device))})
            del q, k, v, grad
            torch.cuda.empty_cache()
    return rows


def decode(contexts, heads: int, d: int, n: int, chunk: int, rounds: int = 3) -> list[dict]:
    """Time per generated token of ``ovq_step`` (B = 1) with a state that has absorbed ``context`` tokens.

    A step's cost depends only on the state (its active centroids and buffer), not on the history, so the
    state is built directly: m = M(context) centroids with random unit key sums, counts and value sums.
    A step from Python is host-bound and its time moves by a fifth between runs of one machine (session 23), so the
    contexts are timed alternated, ``rounds`` times, each round from a copy of the built state; ``ms_per_token`` is
    the median over rounds and ``ms_per_token_min`` the fastest (the host's drift during a run only adds: one run
    at 665895b went from 0.10 to 0.24 ms a token over its rounds for every context alike); do_bench repeats the
    step, so every L-th call also pays the chunk write (amortized).
    ``gpu_ms_per_token`` is the device's own time for the Triton step: eight steps captured in a CUDA graph at
    buffer rows 1–8 (no chunk write), replayed.
    """
    g = torch.Generator(device="cuda").manual_seed(0)
    built, (rows, add) = {}, row_log()
    backends = (("torch", "ovq_step (PyTorch read)"), ("triton", "ovq_step (Triton decode step)"))
    for context in contexts:
        state = OVQState.empty(1, heads, d, chunk_size=chunk, max_centroids=n, device="cuda")
        m = growth_target(context, n, "saturating", 1.0)
        state.sum_k[:, :, :m] = F.normalize(torch.randn(1, heads, m, d, device="cuda", generator=g), dim=-1)
        state.count[:, :, :m] = torch.randint(1, 64, (1, heads, m), device="cuda", generator=g).float()
        state.sum_v[:, :, :m] = torch.randn(1, heads, m, d, device="cuda", generator=g) * state.count[:, :, :m, None]
        state.num_centroids, state.num_absorbed = m, context
        q, k, v = (torch.randn(1, 1, heads, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
        # Correctness first: one step from copies of the state through both reads.
        outs = {b: ovq_step(q, k, v, 12.0, state.clone(), chunk_size=chunk, max_centroids=n, backend=b)[0]
                for b, _ in backends}
        diff = (outs["triton"].float() - outs["torch"].float()).abs().max().item()
        built[context] = (state, (q, k, v), diff)
    times = {}
    for _ in range(rounds):
        for context, (state, (q, k, v), _) in built.items():
            for backend, _ in backends:
                st = state.clone()
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                ms = _bench(lambda: ovq_step(q, k, v, 12.0, st, chunk_size=chunk, max_centroids=n, backend=backend))
                times.setdefault((context, backend), []).append((ms, torch.cuda.max_memory_allocated()))
    for context, (state, (q, k, v), diff) in built.items():
        for backend, name in backends:
            ms = sorted(x for x, _ in times[context, backend])
            gpu_ms = _graph_step_ms(state, (q, k, v), chunk, n) if backend == "triton" else None
            add({"op": name, "backend": backend, "context": context, "H": heads, "D": d, "N": n,
                 "active_centroids": state.num_centroids, "ms_per_token": ms[len(ms) // 2], "ms_per_token_min": ms[0],
                 "ms_per_token_rounds": [x for x, _ in times[context, backend]], "gpu_ms_per_token": gpu_ms,
                 "max_abs_diff_vs_torch": diff, "state_bytes": state.nbytes,
                 "peak_allocated_bytes": max(b for _, b in times[context, backend])})
    return rows


def _graph_step_ms(state, qkv, chunk: int, n: int, steps: int = 8) -> float:
    """The Triton decoding step's device time: ``steps`` steps (buffer rows 1..steps, no chunk write) captured in
    one CUDA graph; a replay redoes them alike (each writes its own row and reads the rows before it)."""
    st = state.clone()
    st.buffer_len = 1
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on the capture's stream: compiles, and makes its scratch buffers
        for _ in range(2):
            st.buffer_len = 1
            ovq_step(*qkv, 12.0, st, chunk_size=chunk, max_centroids=n, backend="triton")
    torch.cuda.current_stream().wait_stream(stream)
    st.buffer_len = 1
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for _ in range(steps):
            ovq_step(*qkv, 12.0, st, chunk_size=chunk, max_centroids=n, backend="triton")
    return _bench(graph.replay) / steps


def decode_lines(rows: list[dict]) -> list[str]:
    """One line per decode row: the median and fastest ms per token over the rounds, the Triton step's GPU time."""
    lines = []
    for r in rows:
        gpu = f", GPU {1e3 * r['gpu_ms_per_token']:.1f} us" if r.get("gpu_ms_per_token") else ""
        spread = "/".join(f"{x:.3f}" for x in r["ms_per_token_rounds"])
        lines.append(f"decode {r['backend']:>6} ctx={r['context']:>8} m={r['active_centroids']:>5} "
                     f"{r['ms_per_token']:.3f} ms/token, fastest {r['ms_per_token_min']:.3f} (rounds {spread}{gpu}) "
                     f"state {r['state_bytes'] / 2**20:.2f} MiB (max |diff| vs torch {r['max_abs_diff_vs_torch']:.1e})")
    return lines


def table(rows: list[dict]) -> str:
    """One line per (D, T, N): OVQ and VQ times, the online update's overhead (forward alone, as at inference, and
    fwd+bwd, as in training), and the peers; with detached rows (``bench(detached=True)``), also OVQ's fwd+bwd
    overhead over VQ when neither passes gradient through its dictionary (``det upd%``)."""
    with_detached = any(r["op"] == "ovq_detached" for r in rows)
    lines = [f"{'D':>4}{'T':>7}{'N':>6} {'ovq f':>8}{'vq f':>8}{'f upd%':>8}{'ovq fb':>9}{'vq fb':>8}{'upd%':>8}"
             f"{'sdpa fb':>9}{'gdn fb':>8}{'ovq/sdpa':>9}{'ovq/gdn':>8}"
             + (f"{'det upd%':>9}" if with_detached else "")]
    peers = {(r["D"], r["T"], r["op"]): r for r in rows if r["op"] in ("sdpa", "gdn")}

    def same(op, r):
        return next((x for x in rows if x["op"] == op and (x["D"], x["T"], x["N"]) == (r["D"], r["T"], r["N"])), None)
    for r in rows:
        if r["op"] != "ovq":
            continue
        vq, det, vq_det = same("vq", r), same("ovq_detached", r), same("vq_detached", r)
        sd, gd = peers.get((r["D"], r["T"], "sdpa")), peers.get((r["D"], r["T"], "gdn"))

        def fmt(x, w=8):
            return f"{x:>{w}.2f}" if isinstance(x, float) else f"{'-':>{w}}"
        upd_f = 100 * (r["fwd_ms"] / vq["fwd_ms"] - 1) if vq else None
        upd = 100 * (r["fwd_bwd_ms"] / vq["fwd_bwd_ms"] - 1) if vq else None
        sd_fb = sd["fwd_bwd_ms"] if sd else None
        gd_fb = gd["fwd_bwd_ms"] if gd and gd["fwd_bwd_ms"] else None
        lines.append(f"{r['D']:>4}{r['T']:>7}{r['N']:>6} {fmt(r['fwd_ms'])}{fmt(vq['fwd_ms'] if vq else None)}"
                     f"{fmt(upd_f)}{fmt(r['fwd_bwd_ms'], 9)}"
                     f"{fmt(vq['fwd_bwd_ms'] if vq else None)}{fmt(upd)}{fmt(sd_fb, 9)}{fmt(gd_fb)}"
                     f"{fmt(r['fwd_bwd_ms'] / sd_fb if sd_fb else None, 9)}{fmt(r['fwd_bwd_ms'] / gd_fb if gd_fb else None)}"
                     + (fmt(100 * (det["fwd_bwd_ms"] / vq_det["fwd_bwd_ms"] - 1) if det and vq_det else None, 9)
                        if with_detached else ""))
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check the kernels against the PyTorch op")
    ap.add_argument("--no-check", action="store_true", help="skip the correctness check before timing")
    ap.add_argument("--check-dtypes", default="float32,bfloat16",
                    help="the check's cases of these dtypes only (the bf16 ones are the slow ones)")
    ap.add_argument("--seq-lens", default="2048,4096,16384,65536")
    ap.add_argument("--head-dims", default="64,128")
    ap.add_argument("--centroids", default="1024,4096")
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=65536, help="B·T")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--peers", default="sdpa,gdn")
    ap.add_argument("--detached", action="store_true",
                    help="also time OVQ and VQ with detach_state=True (no gradient through the dictionary)")
    ap.add_argument("--decode-contexts", default="4096,65536,1048576")
    ap.add_argument("--decode-rounds", type=int, default=3,
                    help="times each decode context is timed, alternated with the others (the median is reported)")
    ap.add_argument("--decode-only", action="store_true",
                    help="only the decoding benchmark (no check of the chunk kernels: each row has its difference from PyTorch)")
    ap.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE",
                    help="ovq.ops.triton_chunk settings for the check and the timing, e.g. FWD_CACHED_OPERANDS=False")
    ap.add_argument("--out", default=None,
                    help="JSON to write (default: results/ops_h200.json, or results/ops_decode_h200.json with --decode-only)")
    args = ap.parse_args(argv)
    settings = kernel_settings(ap, args.set)
    check_dtypes = args.check_dtypes.split(",")
    if not set(check_dtypes) <= {"float32", "bfloat16"}:  # ("" and "float32," leave an empty name: an error too)
        ap.error(f"--check-dtypes: float32 and/or bfloat16, not {args.check_dtypes!r}")
    if args.decode_rounds < 1:
        ap.error(f"--decode-rounds must be at least 1, got {args.decode_rounds}")
    if not torch.cuda.is_available():
        sys.exit("ovq.bench.ops needs a CUDA GPU")
    apply_kernel_settings(settings)  # recorded in the JSON with the other arguments
    payload = {"benchmark": "ovq.bench.ops", "args": vars(args), "environment": environment()}
    out = args.out or ("results/ops_decode_h200.json" if args.decode_only else "results/ops_h200.json")
    if not (args.no_check or args.decode_only):  # the decode rows carry their own difference from the PyTorch read
        payload["check"] = check(dtypes=check_dtypes, on_row=saving_rows(out, payload, "check"))
        save_unfinished(out, payload)  # kept if the timings are cut short
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    if args.decode_only:
        payload["decode"] = decode(ints(args.decode_contexts), args.heads, 64, 4096, args.chunk_size,
                                   args.decode_rounds)
    elif not args.check:
        payload["results"] = bench(ints(args.seq_lens), ints(args.head_dims), ints(args.centroids), args.chunk_size,
                                   args.tokens, args.heads, args.peers.split(","),
                                   on_row=saving_rows(out, payload, "results"), detached=args.detached)
        payload["decode"] = decode(ints(args.decode_contexts), args.heads, 64, 4096, args.chunk_size,
                                   args.decode_rounds)
    path = save_json(out, payload)
    if "results" in payload:
        print(table(payload["results"]))
    for line in decode_lines(payload.get("decode", [])):
        print(line)
    print(f"saved {path}")
    return payload


if __name__ == "__main__":
    main()
