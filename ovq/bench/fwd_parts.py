"""Where the Triton forward's time goes: the op's forward (``ovq_fwd_kernel``, its defaults: cached operands, one pass)
at D = 64, N = 4,096, L = 128, with the kernel as it is and with variants that each take one part out.

    python -m ovq.bench.fwd_parts                 # on a GPU, ~1 minute
    python -m ovq.bench.fwd_parts --check-edits   # anywhere: every variant's edit applies and loads

A variant is the kernel module's source with a few lines removed or replaced (``EDITS``, applied by
``bench.source_edits``), patched in for the op's launch. A removed part changes the output (each row says how much,
against the kernel's own output) and what later chunks read, so these are timings, never kernels to use:
- ``no_loop``: no block loop (the read and the assignment's search): what each chunk costs besides it, the picks,
  scatter, operand refresh, the slices' exchange and the output's merge (tokens a chunk does not give to a new
  centroid all go to one slot);
- ``no_read``: the block loop without the read (its loads, logits product, online softmax and value product);
- ``no_assign``: the block loop without the assignment's loads and its bf16x3 products (each key takes the slot of
  its query's best logit instead);
- ``no_picks``: no farthest-point picks (nor their Gram matrix at 4K): new slots stay empty;
- ``no_scatter``: no scatter-add of the chunk's tokens and no operand refresh (the dictionary stays empty; the block
  loop still walks every active slot).
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

import torch

from . import source_edits
from .common import environment, save_json, saving_rows
from .ops import _bench, _rel

_READ_LOADS = ('                mu_rd = tl.load(crd_ptr + rows_d, cache_modifier=".cg")\n'
               '                muv = tl.load(cmv_ptr + (c_base + n)[:, None] * BDV + offs_dv[None, :], '
               'cache_modifier=".cg")\n')
_READ_MATH = ('                off_rows = tl.load(cpr_ptr + off_row, cache_modifier=".cg")\n'
              '                logits = _mm_acc(q_op, tl.trans(mu_rd), _mm(ones_w, tl.trans(off_rows), READ_PREC), '
              'READ_PREC)\n'
              '                row_max, row_sum, acc = _softmax_step(row_max, row_sum, acc, logits, muv, READ_PREC)\n')
_ASSIGN = ('                mu_hi = tl.load(chi_ptr + rows_d, cache_modifier=".cg")\n'
           '                mu_lo = mu_hi\n'
           '                if ASSIGN_PREC == "bf16x3":\n'
           '                    mu_lo = tl.load(clo_ptr + rows_d, cache_modifier=".cg")\n'
           '                opened = tl.load(cpr_ptr + off_row + OFFW, cache_modifier=".cg")\n'
           '                sim = _assign_mm_acc(k_hi, k_lo, tl.trans(mu_hi), tl.trans(mu_lo),\n'
           '                                     _mm(ones_w, tl.trans(opened), READ_PREC), ASSIGN_PREC)\n')
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
EDITS: dict[str, list[source_edits.Edit]] = {
    "full": [],
    "no_loop": [(_LOOP, _LOOP.replace("range(0, m_loc, BN)", "range(0, 0, BN)"))],
    # (the assignment's similarities stay: the read's logits go with it, so its own loads are kept)
    "no_read": [(_READ_LOADS, ""), (_READ_MATH, "")],
    "no_assign": [(_ASSIGN, "                sim = logits\n")],
    "no_picks": [(_PICKS, _PICKS.replace("n_new > 0", "n_new < 0"))],
    "no_scatter": [(_SCATTER, "\n                pass\n"), (_REFRESH, _REFRESH.replace("if CACHED:", "if False:"))],
}


def edited_source(variant: str) -> str:
    """kernels.py with ``variant``'s edits; an edit that no longer matches is an error naming it."""
    from ..ops import kernels
    return source_edits.edited_source(kernels, EDITS[variant], variant)


def load_variant(variant: str, folder: Path):
    """The variant's forward kernel (a JIT function)."""
    from ..ops import kernels
    return source_edits.load_edited(kernels, EDITS[variant], variant, folder).ovq_fwd_kernel


def forward_with(variant_kernel, q, k, v, beta, centroids: int):
    """The op's forward with ``variant_kernel`` launched in place of ``ovq_fwd_kernel`` (the op imports it from
    ``ovq.ops.kernels`` at each call)."""
    from ..ops import kernels, ovq_attention

    real = kernels.ovq_fwd_kernel
    kernels.ovq_fwd_kernel = variant_kernel
    try:
        with torch.no_grad():
            return ovq_attention(q, k, v, beta, max_centroids=centroids, chunk_size=128, backend="triton")[0]
    finally:
        kernels.ovq_fwd_kernel = real


def measure(configs: list[tuple[int, int]], variants: list[str], heads: int, centroids: int, save_rows) -> list[dict]:
    from ..ops import kernels

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        loaded = {name: load_variant(name, Path(folder)) for name in variants}
        for b, t in configs:
            torch.manual_seed(0)
            q, k, v = (torch.randn(b, t, heads, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            beta = torch.full((heads,), 8.0, device="cuda")
            reference = forward_with(kernels.ovq_fwd_kernel, q, k, v, beta, centroids)
            for name in ["kernel", *variants, "kernel"]:  # the kernel again last: the run's drift
                kernel = kernels.ovq_fwd_kernel if name == "kernel" else loaded[name]
                o = forward_with(kernel, q, k, v, beta, centroids)  # (compiles)
                ms = _bench(lambda: forward_with(kernel, q, k, v, beta, centroids))
                rows.append({"B": b, "T": t, "variant": name, "fwd_ms": ms, "o_rel_err": _rel(o, reference),
                             "o_finite": bool(torch.isfinite(o).all())})
                print(rows[-1], flush=True)
                save_rows(rows)
    return rows


def table(rows: list[dict]) -> str:
    """Each variant's forward ms and what taking its part out saved, per configuration."""
    lines = [f"{'B x T':>10s} {'variant':12s} {'fwd ms':>8s} {'saves ms':>9s} {'o rel. err':>10s}"]
    for row in rows:
        full = next(r["fwd_ms"] for r in rows if (r["B"], r["T"], r["variant"]) == (row["B"], row["T"], "kernel"))
        saves = "" if row["variant"] in ("kernel", "full") else f"{full - row['fwd_ms']:9.2f}"
        lines.append(f"{row['B']:>3d} x {row['T']:<5d} {row['variant']:12s} {row['fwd_ms']:8.2f} {saves:>9s} "
                     f"{row['o_rel_err']:10.1e}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="1x65536,16x4096", help="comma-separated BxT (default: %(default)s)")
    ap.add_argument("--variants", default=",".join(EDITS), help=f"comma-separated, of: {', '.join(EDITS)}")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--centroids", type=int, default=4096)
    ap.add_argument("--check-edits", action="store_true", help="apply and load every variant; no GPU needed")
    ap.add_argument("--out", default="results/fwd_parts_h200.json")
    args = ap.parse_args(argv)
    try:
        configs = [tuple(int(x) for x in item.split("x")) for item in args.configs.split(",")]
    except ValueError:
        ap.error(f"--configs must be BxT items such as 1x65536, got {args.configs!r}")
    if any(len(c) != 2 or min(c) < 1 for c in configs) or args.heads < 1 or args.centroids < 1:
        ap.error("--configs' B and T, --heads and --centroids must be at least 1")
    variants = [x for x in args.variants.split(",") if x]
    unknown = [x for x in variants if x not in EDITS]
    if unknown or not variants:
        ap.error(f"--variants: unknown {unknown} (known: {', '.join(EDITS)})")
    if args.check_edits:
        with tempfile.TemporaryDirectory() as folder:
            for variant in variants:
                load_variant(variant, Path(folder))
                print(f"{variant}: edits apply, module loads")
        return {"variants": variants}
    if not torch.cuda.is_available():
        ap.error("timing needs a CUDA GPU; --check-edits runs anywhere")
    payload = {"benchmark": "fwd_parts", "environment": environment(), "H": args.heads, "D": 64,
               "N": args.centroids, "chunk_size": 128, "dtype": "bf16", "beta": 8.0,
               "edits": {name: [source_edits.shown(p) for p, _ in EDITS[name]] for name in variants}}
    payload["rows"] = measure(configs, variants, args.heads, args.centroids, saving_rows(args.out, payload, "rows"))
    print(table(payload["rows"]))
    print(f"saved {save_json(args.out, payload)}")
    return payload


if __name__ == "__main__":
    main()
