"""A/B of kernel settings in one process: the op under two sets of ``ovq.ops.triton_chunk`` settings, alternated.

    python -m ovq.bench.ab --b BWD_CACHED_OPERANDS=False                       # against the defaults, 64K and 4K
    python -m ovq.bench.ab --a FWD_GRAM_PICKS=False --b FWD_GRAM_PICKS=True --seq-lens 4096 --rounds 3

For each T (B·T tokens, H heads, bf16 inputs, beta 12 as in ``bench.ops``), first a check, then the timings:

- check: both forwards' outputs and counts from the same inputs under the fixed-order scatter (so that two runs of one
  setting are bitwise the same and any difference is the setting's), and both backwards' gradients from one forward
  (A's), beside A's backward run twice (the spread of its float atomics);
- timing: forward and forward+backward under A, then B, ``--rounds`` times (do_bench medians, CUDA events), so a
  drift of the machine falls on both.

One process compiles each setting's kernels once and shares the inputs, where a ``bench.ops --set`` run per setting
pays start-up, compiles and peers every time (a session has 30 device-minutes). Rows are saved as they come (a run
stopped at a time limit keeps them, marked unfinished); a table is printed last.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from ..ops import ovq_attention
from .common import (environment, kernel_settings, kernel_settings_applied, relative_error, row_log, save_json,
                     saving_rows)


def do_bench_ms(fn, rep_ms: int) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=rep_ms, return_mode="median")


def check(op, inputs, grad, a: dict, b: dict) -> dict:
    """B against A on these inputs: forward outputs and counts (fixed-order scatter), gradients from A's forward."""
    outs = []
    for values in (a, b):
        with kernel_settings_applied(values | {"FWD_ORDERED_SCATTER": True}), torch.no_grad():
            outs.append(op(*inputs, final_state=True))
    (o_a, s_a), (o_b, s_b) = outs
    row = {"o_rel": relative_error(o_b, o_a), "count_slots_differing": int((s_b.count != s_a.count).sum().item())}
    with kernel_settings_applied(a):
        o = op(*inputs)
    grads = []
    for values in (a, b, a):
        with kernel_settings_applied(values):
            grads.append(torch.autograd.grad(o, inputs, grad, retain_graph=True))
    for name, g_a, g_b, g_a2 in zip(("dq", "dk", "dv"), *grads):
        row[f"{name}_rel"] = relative_error(g_b, g_a)
        row[f"{name}_rel_a_twice"] = relative_error(g_a2, g_a)
    return row


def run(seq_lens, a: dict, b: dict, *, tokens: int, heads: int, head_dim: int, centroids: int, chunk: int,
        rounds: int, timer, do_check: bool = True, device: str = "cuda", dtype=torch.bfloat16,
        on_row=None) -> list[dict]:
    """The A/B at every T; ``timer(fn) -> ms`` (``do_bench_ms``); ``on_row(rows)`` after each new row."""
    rows, add = row_log(on_row)

    def op(q, k, v, final_state=False):
        o, state = ovq_attention(q, k, v, 12.0, chunk_size=chunk, max_centroids=centroids,
                                 output_final_state=final_state, backend="triton")
        return (o, state) if final_state else o

    for t in seq_lens:
        bsz = max(1, tokens // t)
        g = torch.Generator(device=device).manual_seed(0)
        inputs = tuple(torch.randn(bsz, t, heads, head_dim, device=device, dtype=dtype, generator=g).requires_grad_()
                       for _ in range(3))
        grad = torch.randn(bsz, t, heads, head_dim, device=device, dtype=dtype, generator=g)
        common = {"T": t, "B": bsz, "H": heads, "D": head_dim, "N": centroids, "chunk": chunk}
        if do_check:
            add(common | {"kind": "check"} | check(op, inputs, grad, a, b))

        def fwd():
            with torch.no_grad():
                op(*inputs)

        def fwd_bwd():
            torch.autograd.backward(op(*inputs), grad)
        for rnd in range(rounds):
            for label, values in (("A", a), ("B", b)):
                with kernel_settings_applied(values):
                    add(common | {"kind": "time", "setting": label, "round": rnd, "fwd_ms": timer(fwd),
                                  "fwd_bwd_ms": timer(fwd_bwd)})
        del inputs, grad
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def table(rows: list[dict]) -> str:
    """Per T: each setting's forward and forward+backward, mean over rounds (and the rounds' spread), and B over A."""
    lines = [f"{'T':>6} {'B':>3} {'A fwd':>8} {'B fwd':>8} {'B/A-1':>7} {'A fwd+bwd':>10} {'B fwd+bwd':>10} "
             f"{'B/A-1':>7} {'A range':>13} {'B range':>13}"]
    for t in dict.fromkeys(r["T"] for r in rows if r["kind"] == "time"):
        timed = {s: [r for r in rows if r["kind"] == "time" and r["T"] == t and r["setting"] == s] for s in "AB"}
        if not timed["A"] or not timed["B"]:
            continue
        mean = {(s, key): statistics.fmean(r[key] for r in timed[s]) for s in "AB" for key in ("fwd_ms", "fwd_bwd_ms")}
        spread = {s: f"{min(r['fwd_bwd_ms'] for r in timed[s]):.2f}-{max(r['fwd_bwd_ms'] for r in timed[s]):.2f}"
                  for s in "AB"}
        lines.append(f"{t:>6} {timed['A'][0]['B']:>3} {mean['A', 'fwd_ms']:>8.2f} {mean['B', 'fwd_ms']:>8.2f} "
                     f"{100 * (mean['B', 'fwd_ms'] / mean['A', 'fwd_ms'] - 1):>+6.1f}% "
                     f"{mean['A', 'fwd_bwd_ms']:>10.2f} {mean['B', 'fwd_bwd_ms']:>10.2f} "
                     f"{100 * (mean['B', 'fwd_bwd_ms'] / mean['A', 'fwd_bwd_ms'] - 1):>+6.1f}% "
                     f"{spread['A']:>13} {spread['B']:>13}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    summary, details = __doc__.split("\n\n", 1)
    ap = argparse.ArgumentParser(description=summary, epilog=details,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", nargs="*", default=[], metavar="NAME=VALUE", help="setting A (default: the defaults)")
    ap.add_argument("--b", nargs="+", required=True, metavar="NAME=VALUE", help="setting B")
    ap.add_argument("--seq-lens", default="65536,4096")
    ap.add_argument("--tokens", type=int, default=65536, help="B·T")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--centroids", type=int, default=4096)
    ap.add_argument("--chunk-size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rep-ms", type=int, default=400, help="do_bench's repetition time per measurement")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--out", default="results/ab_h200.json")
    args = ap.parse_args(argv)
    a, b = kernel_settings(ap, args.a), kernel_settings(ap, args.b)
    if a == b:
        ap.error("--a and --b are the same settings")
    try:
        seq_lens = [int(t) for t in args.seq_lens.split(",")]
    except ValueError:
        ap.error(f"--seq-lens must be comma-separated integers, got {args.seq_lens!r}")
    for name in ("rounds", "tokens", "heads", "head_dim", "centroids", "chunk_size", "rep_ms"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if min(seq_lens) < 1:
        ap.error(f"--seq-lens must be at least 1, got {args.seq_lens!r}")
    if not torch.cuda.is_available():
        ap.error("the A/B times CUDA kernels: no GPU here")
    payload = {"environment": environment(), "args": vars(args), "a": a, "b": b}
    rows = run(seq_lens, a, b, tokens=args.tokens, heads=args.heads,
               head_dim=args.head_dim, centroids=args.centroids, chunk=args.chunk_size, rounds=args.rounds,
               do_check=not args.no_check, timer=lambda fn: do_bench_ms(fn, args.rep_ms),
               on_row=saving_rows(args.out, payload, "rows"))
    save_json(args.out, payload | {"rows": rows})
    print(f"\nA: {a or 'defaults'}   B: {b}")
    for r in rows:
        if r["kind"] == "check":
            print(f"check T={r['T']}: " + ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}"
                                                    for k, v in r.items() if k.endswith(("_rel", "_twice", "ing"))))
    print(table(rows))
    return payload | {"rows": rows}


if __name__ == "__main__":
    main()
