"""Where the two scan kernels' time goes: the op's forward (``ovq_fwd_kernel``, with its defaults: cached operands,
one pass) or its backward (``ovq_bwd_dict_kernel``) at D = 64, N = 4,096, L = 128, with the kernel as it is and with
variants that each take one part out.

    python -m ovq.bench.scan_parts                     # the forward, on a GPU, ~1 minute
    python -m ovq.bench.scan_parts --kernel bwd        # the dictionary backward
    python -m ovq.bench.scan_parts --kernel bwd --set BWD_CACHED_OPERANDS=False  # with a kernel setting
    python -m ovq.bench.scan_parts --check-edits       # anywhere: every variant's edit applies and loads

A variant is the kernel module's source with a few lines removed or replaced (``EDITS``, applied by
``bench.source_edits``), patched in for the op's launch. A removed part changes the result (each row says how much,
against the kernel's own) and, in the forward, what later chunks read, so these are timings, never kernels to use.
The backward is timed alone, from one forward, so every variant sees the same assignments.

Forward variants:
- ``no_loop``: no block loop (the read and the assignment's search): what each chunk costs besides it, the picks,
  scatter, operand refresh, the slices' exchange and the output's merge (tokens a chunk does not give to a new
  centroid all go to one slot);
- ``no_read``: the block loop without the read (its loads, logits product, online softmax and value product);
- ``no_assign``: the block loop without the assignment's loads and its bf16x3 products (each key takes the slot of
  its query's best logit instead);
- ``no_picks``: no farthest-point picks (nor their Gram matrix at 4K): new slots stay empty;
- ``no_scatter``: no scatter-add of the chunk's tokens and no operand refresh (the dictionary stays empty; the block
  loop still walks every active slot).

Backward variants:
- ``no_loop``: no block loop: the per-chunk work (gathers of G for the merged tokens, the rewind, loads);
- ``no_gk`` / ``no_gv`` / ``no_g``: the block loop without adding the read's gradient to the key sums' accumulator
  G_k (its product, projection and atomic adds), the value sums' G_v (its product and atomic adds), or either;
- ``no_dq``: without the atomic add of the chunk's dq;
- ``no_rewind``: without subtracting the chunk's tokens from the sums and counts (and the offset rows' refresh);
- ``no_gather``: without the merged tokens' loads of G into dk and dv.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import tempfile
from pathlib import Path

import torch

from . import source_edits
from .common import apply_kernel_settings, environment, kernel_settings, relative_error, save_json, saving_rows
from .ops import _bench

_READ_LOADS = ('                mu_rd = tl.load(crd_ptr + rows_d, cache_modifier=".cg")\n'
               '                muv = tl.load(cmv_ptr + (c_base + n)[:, None] * BDV + offs_dv[None, :], '
               'cache_modifier=".cg")\n')
_READ_MATH = ('                off_rows = tl.load(cpr_ptr + off_row, cache_modifier=".cg")\n'
              '                logits = _mm_acc(q_op, tl.trans(mu_rd), _mm(ones_w, tl.trans(off_rows), READ_PREC), '
              'READ_PREC)\n'
              '                row_max, row_sum, acc = _softmax_step(row_max, row_sum, acc, logits, muv, READ_PREC)\n')
# (from the choice of the hi part's source to the similarities' product, whose call ends the span)
_ASSIGN = re.compile(r"\n {16}if HI_IS_READ:.*?_mm\(ones_w, tl\.trans\(opened\), READ_PREC\), ASSIGN_PREC\)\n", re.S)
_LOOP = ("        for r0 in range(0, m_loc, BN):\n"
         "            r = r0 + offs_n\n"
         "            nmask = r < m_loc\n"
         "            n = s + NB * r\n"
         "            if CACHED and not TWO_PASS:")
_PICKS = "            if n_new > 0:  # most chunks of a long sequence open none: no picks\n"
# (the plain scatter's three atomic adds; the v load and the slot indices they used go with them as dead code)
_SCATTER = re.compile(r"\n {16}if not STATIC:\n {20}tl\.atomic_add\(sk_ptr.*?mask=own, sem=\"relaxed\"\)\n", re.S)
_REFRESH = "        if CACHED:  # the slots this chunk changed get fresh operands"

# variant -> (pattern, replacement) edits of kernels.py's source, in order (``bench.source_edits``)
FWD_EDITS: dict[str, list[source_edits.Edit]] = {
    "full": [],
    "no_loop": [(_LOOP, _LOOP.replace("range(0, m_loc, BN)", "range(0, 0, BN)"))],
    # (the assignment's similarities stay: the read's logits go with it, so its own loads are kept)
    "no_read": [(_READ_LOADS, ""), (_READ_MATH, "")],
    "no_assign": [(_ASSIGN, "\n                sim = logits\n")],
    "no_picks": [(_PICKS, _PICKS.replace("n_new > 0", "n_new < 0"))],
    "no_scatter": [(_SCATTER, "\n                pass\n"), (_REFRESH, _REFRESH.replace("if CACHED:", "if False:"))],
}


_BWD_LOOP = ("        for r0 in range(0, m_loc, BN):\n"
             "            n = s + NB * (r0 + offs_n)  # (whole blocks, unmasked: see _read_grads)\n"
             "            if CACHED:")
# (the block's gradient is kernels._read_grads, the merged tokens' gathers and the rewind kernels._merge_and_rewind)
_BWD_GK = re.compile(r"\n {8}if not STATIC:\n {12}dmu = _mm\(tl\.trans\(ds\).*?"
                     r"tl\.atomic_add\(gk_ptr \+ rows_k.*?\)\n", re.S)
_BWD_GV = re.compile(r"\n {8}dsv = _mm\(tl\.trans\(p\).*?tl\.atomic_add\(gv_ptr \+ rows_v.*?\)\n", re.S)
_BWD_DQ = ("    tl.atomic_add(dq_ptr + qk_off, beta * dq, mask=tmask[:, None] & dmask[None, :], "
           "sem=\"relaxed\")\n")  # (in kernels._add_dq)
_BWD_REWIND = re.compile(r"\n {4}if not STATIC:\n {8}tl\.atomic_add\(sk_ptr \+ \(p_base \+ zs\).*?"
                         r"_store_offset_rows\(off_ptr, p_base \+ zs, cnt_z, own, COUNT_PRIOR, READ_PREC\)\n", re.S)
_BWD_GATHER = ("    if not DETACH:\n"
               "        _add_gathered(dk_ptr, dv_ptr, gk_ptr, gv_ptr, s_base + zs, own, qk_off, v_off, offs_d, dmask, "
               "offs_dv, dvmask,\n                      D, DV, STATIC)\n")
BWD_EDITS: dict[str, list[source_edits.Edit]] = {
    "full": [],
    "no_loop": [(_BWD_LOOP, _BWD_LOOP.replace("range(0, m_loc, BN)", "range(0, 0, BN)"))],
    "no_gk": [(_BWD_GK, "\n")],
    "no_gv": [(_BWD_GV, "\n")],
    "no_g": [(_BWD_GK, "\n"), (_BWD_GV, "\n")],
    "no_dq": [(_BWD_DQ, "")],
    "no_rewind": [(_BWD_REWIND, "\n    tl.debug_barrier()\n")],
    "no_gather": [(_BWD_GATHER, "")],
}
EDITS = {"fwd": FWD_EDITS, "bwd": BWD_EDITS}  # kernel -> its variants
KERNEL_NAMES = {"fwd": "ovq_fwd_kernel", "bwd": "ovq_bwd_dict_kernel"}


def edited_source(kernel: str, variant: str) -> str:
    """kernels.py with ``kernel``'s ``variant`` edits; an edit that no longer matches is an error naming it."""
    from ..ops import kernels
    return source_edits.edited_source(kernels, EDITS[kernel][variant], f"{kernel}_{variant}")


def load_variant(kernel: str, variant: str, folder: Path):
    """The variant's kernel (a JIT function)."""
    from ..ops import kernels
    module = source_edits.load_edited(kernels, EDITS[kernel][variant], f"{kernel}_{variant}", folder)
    return getattr(module, KERNEL_NAMES[kernel])


@contextlib.contextmanager
def launching(kernel: str, jit_function):
    """The op launches ``jit_function`` in place of ``kernel``'s scan kernel inside the block (the op imports its
    kernels from ``ovq.ops.kernels`` at each call)."""
    from ..ops import kernels

    name = KERNEL_NAMES[kernel]
    real = getattr(kernels, name)
    setattr(kernels, name, jit_function)
    try:
        yield
    finally:
        setattr(kernels, name, real)


def forward(q, k, v, beta, centroids: int):
    """The op's output at the benchmark's settings (L = 128, the Triton kernels)."""
    from ..ops import ovq_attention
    return ovq_attention(q, k, v, beta, max_centroids=centroids, chunk_size=128, backend="triton")[0]


def _inputs(b: int, t: int, heads: int, grad: bool):
    torch.manual_seed(0)
    q, k, v = (torch.randn(b, t, heads, 64, device="cuda", dtype=torch.bfloat16, requires_grad=grad)
               for _ in range(3))
    return q, k, v, torch.full((heads,), 8.0, device="cuda", requires_grad=grad)


def measure(kernel: str, configs: list[tuple[int, int]], variants: list[str], heads: int, centroids: int,
            save_rows) -> list[dict]:
    """Per configuration, the kernel's time (the forward, or the backward alone from one forward) with the kernel,
    each variant, and the kernel again (the run's drift), and each result's relative error against the kernel's."""
    from ..ops import kernels

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        loaded = {name: load_variant(kernel, name, Path(folder)) for name in variants}
        loaded["kernel"] = getattr(kernels, KERNEL_NAMES[kernel])
        for b, t in configs:
            inputs = _inputs(b, t, heads, grad=kernel == "bwd")
            if kernel == "fwd":
                def run():
                    with torch.no_grad():
                        return [forward(*inputs, centroids)]
            else:
                out = forward(*inputs, centroids)
                grad_out = torch.randn_like(out)

                def run():
                    return list(torch.autograd.grad(out, inputs, grad_out, retain_graph=True))
            reference = None
            for name in ["kernel", *variants, "kernel"]:
                with launching(kernel, loaded[name]):
                    results = run()  # (compiles)
                    ms = _bench(run)
                reference = reference or results
                names = ("o",) if kernel == "fwd" else ("dq", "dk", "dv", "dbeta")
                rows.append({"B": b, "T": t, "kernel": kernel, "variant": name, "ms": ms,
                             "rel_err": {n: relative_error(x, y) for n, x, y in zip(names, results, reference)},
                             "finite": all(bool(torch.isfinite(x).all()) for x in results)})
                print(rows[-1], flush=True)
                save_rows(rows)
    return rows


def table(rows: list[dict]) -> str:
    """Each variant's ms and what taking its part out saved, per configuration."""
    lines = [f"{'B x T':>10s} {'kernel':6s} {'variant':12s} {'ms':>8s} {'saves ms':>9s}  rel. error"]
    for row in rows:
        full = next(r["ms"] for r in rows if (r["B"], r["T"], r["variant"]) == (row["B"], row["T"], "kernel"))
        saves = "" if row["variant"] in ("kernel", "full") else f"{full - row['ms']:9.2f}"
        errs = " ".join(f"{n} {e:.1e}" for n, e in row["rel_err"].items())
        lines.append(f"{row['B']:>3d} x {row['T']:<5d} {row['kernel']:6s} {row['variant']:12s} {row['ms']:8.2f} "
                     f"{saves:>9s}  {errs}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", choices=sorted(EDITS), default="fwd")
    ap.add_argument("--configs", default="1x65536,16x4096", help="comma-separated BxT (default: %(default)s)")
    ap.add_argument("--variants", help="comma-separated (default: all of the kernel's): "
                    + "; ".join(f"{k}: {', '.join(v)}" for k, v in EDITS.items()))
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--centroids", type=int, default=4096)
    ap.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE",
                    help="ovq.ops.triton_chunk settings for every row, e.g. BWD_CACHED_OPERANDS=False")
    ap.add_argument("--check-edits", action="store_true", help="apply and load every variant; no GPU needed")
    ap.add_argument("--out", help="JSON to write (default: results/<kernel>_parts_h200.json)")
    args = ap.parse_args(argv)
    try:
        configs = [tuple(int(x) for x in item.split("x")) for item in args.configs.split(",")]
    except ValueError:
        ap.error(f"--configs must be BxT items such as 1x65536, got {args.configs!r}")
    if any(len(c) != 2 or min(c) < 1 for c in configs) or args.heads < 1 or args.centroids < 1:
        ap.error("--configs' B and T, --heads and --centroids must be at least 1")
    settings = kernel_settings(ap, args.set)
    known = EDITS[args.kernel]
    variants = source_edits.chosen_variants(ap, args.variants, known)
    if args.check_edits:
        source_edits.check_edits(lambda name, folder: load_variant(args.kernel, name, folder), variants,
                                 f"{args.kernel} ")
        return {"kernel": args.kernel, "variants": variants}
    if not torch.cuda.is_available():
        ap.error("timing needs a CUDA GPU; --check-edits runs anywhere")
    out = args.out or f"results/{args.kernel}_parts_h200.json"
    apply_kernel_settings(settings)  # (for the run; recorded in the results)
    payload = {"benchmark": "scan_parts", "kernel": args.kernel, "settings": settings, "environment": environment(),
               "H": args.heads, "D": 64, "N": args.centroids, "chunk_size": 128, "dtype": "bf16", "beta": 8.0,
               "edits": {name: [source_edits.shown(p) for p, _ in known[name]] for name in variants}}
    payload["rows"] = measure(args.kernel, configs, variants, args.heads, args.centroids,
                              saving_rows(out, payload, "rows"))
    print(table(payload["rows"]))
    print(f"saved {save_json(out, payload)}")
    return payload


if __name__ == "__main__":
    main()
