"""Where the Gluon dictionary backward's time goes: the op's backward at 64K, D = 64, N = 4,096 with the Triton kernel,
the Gluon kernel (``ovq.ops.gluon_bwd``) and Gluon variants with one part taken out.

    python -m ovq.bench.gluon_bwd_parts                 # on a Hopper GPU, ~1 minute
    python -m ovq.bench.gluon_bwd_parts --check-edits   # anywhere: every variant's edit applies and loads

A variant is the kernel's source with a few lines removed or replaced (``EDITS``, applied by ``bench.source_edits``); a
removed part makes its gradient wrong (the rows say how wrong), so these are timings, never kernels to use. One
forward feeds every backward, so the Gluon kernel's error against the Triton kernel's is that of the backward alone
(the compiled forward is not reproducible run to run at 64K: ``docs/kernels.md``, "Session 14").
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import tempfile
from pathlib import Path

import torch

from . import source_edits
from .common import environment, relative_error, save_json, saving_rows

_GATHER_IN_LOOP = "            gv_tok += _gather_own(gv_old, own_blk == b, local, tok_rows)\n"
_GATHER_OPENED = ("        for b in range(read_blocks, all_blocks):\n"
                  "            gv_tok += _gather_own(gv_s.index(b).load(accg_l), own_blk == b, local, tok_rows)\n")
# (without its atomic adds, G_k's loads and math are dead code and go too)
_GK_ADD = re.compile(r"\n +gl\.atomic_add\(gk_ptr \+ \(s_base \+ n_g\).*?sem=\"relaxed\"\)\n", re.S)
_GV_UPDATE = re.compile(r"\n +gv_s\.index\(b\)\.store\(gv_old \+ .*?0\.0\)\)\n", re.S)
_G_TILE = "g=gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))"
# 8-byte pairs XOR-swizzled by row: the accumulator layout's 8 rows a warp touches fall on different banks
_G_TILE_SWIZZLED = "g=gl.SwizzledSharedLayout(2, 1, 8, [1, 0]))"
_GK_ADD_BLOCKED = ("\n                gl.atomic_add(gk_ptr + (s_base + n)[:, None] * D + cols[None, :], "
                   "gl.convert_layout(dsk, blocked), mask=(cnt > 0.5)[:, None], sem=\"relaxed\")\n")

# variant -> (pattern, replacement) edits of gluon_bwd.py's source, in order: a literal, or a compiled regular
# expression over one statement
EDITS: dict[str, list[tuple[str | re.Pattern, str]]] = {
    "full": [],
    "no_gather": [(_GATHER_IN_LOOP, ""), (_GATHER_OPENED, "")],  # the merged tokens' G_v (dv)
    "no_gather_no_gk": [(_GATHER_IN_LOOP, ""), (_GATHER_OPENED, ""), (_GK_ADD, "\n")],
    "no_gather_no_gv": [(_GATHER_IN_LOOP, ""), (_GATHER_OPENED, ""), (_GV_UPDATE, "\n")],  # G_v's shared update
    "no_gk": [(_GK_ADD, "\n")],
    "gk_blocked": [(_GK_ADD, _GK_ADD_BLOCKED)],  # G_k added from the loads' layout (coalesced rows): exact
    "g_swizzled": [(_G_TILE, _G_TILE_SWIZZLED)],  # the G_v tile without 8-way bank conflicts: exact
    "no_gather_g_swizzled": [(_GATHER_IN_LOOP, ""), (_GATHER_OPENED, ""), (_G_TILE, _G_TILE_SWIZZLED)],
}


def edited_source(variant: str) -> str:
    """gluon_bwd.py with ``variant``'s edits; an edit that no longer matches is an error naming it."""
    from ..ops import gluon_bwd
    return source_edits.edited_source(gluon_bwd, EDITS[variant], variant)


def load_variant(variant: str, folder: Path):
    """The variant's kernel (a JIT function)."""
    from ..ops import gluon_bwd
    return source_edits.load_edited(gluon_bwd, EDITS[variant], variant, folder).ovq_bwd_dict_gluon_kernel


@contextlib.contextmanager
def counting_gluon_launches():
    """Yields a list that gets an entry for each launch of the Gluon backward inside the block (so a timed row can
    say whether that kernel ran); on exit ``gluon_bwd.launch`` and ``OVQ_GLUON_BWD``, which the caller switches,
    are as they were."""
    from ..ops import gluon_bwd

    real_launch, launches, before = gluon_bwd.launch, [], os.environ.get("OVQ_GLUON_BWD")
    gluon_bwd.launch = lambda *a, **kw: (launches.append(1), real_launch(*a, **kw))[1]
    try:
        yield launches
    finally:
        gluon_bwd.launch = real_launch
        if before is None:
            os.environ.pop("OVQ_GLUON_BWD", None)
        else:
            os.environ["OVQ_GLUON_BWD"] = before


def _errors(grads, reference) -> dict:
    """Each gradient's relative error against the reference run's (dq, dk, dv, dbeta)."""
    return dict(zip(("dq", "dk", "dv", "dbeta"), map(relative_error, grads, reference)))


def measure(variants: list[str], seq_len: int, heads: int, centroids: int, repeats: int, save_rows) -> list[dict]:
    from ..ops import gluon_bwd, ovq_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, seq_len, heads, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    beta = torch.full((heads,), 8.0, device="cuda", requires_grad=True)
    do = torch.randn_like(q)
    o, _ = ovq_attention(q, k, v, beta, max_centroids=centroids, chunk_size=128, backend="triton")
    inputs = (q, k, v, beta)

    def backward(gluon: bool):
        os.environ["OVQ_GLUON_BWD"] = "1" if gluon else "0"
        grads = torch.autograd.grad(o, inputs, do, retain_graph=True)  # (compiles)
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            torch.autograd.grad(o, inputs, do, retain_graph=True)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return sorted(times)[len(times) // 2], grads

    rows, real_kernel = [], gluon_bwd.ovq_bwd_dict_gluon_kernel
    with counting_gluon_launches() as launches, tempfile.TemporaryDirectory() as folder:
        ms, reference = backward(False)
        rows.append({"kernel": "triton", "bwd_ms": ms})
        print(rows[-1], flush=True)
        try:
            for variant in variants:
                gluon_bwd.ovq_bwd_dict_gluon_kernel = load_variant(variant, Path(folder))
                launches.clear()
                ms, grads = backward(True)
                rows.append({"kernel": f"gluon:{variant}", "bwd_ms": ms, "gluon_ran": bool(launches),
                             "rel_err": _errors(grads, reference)})
                print(rows[-1], flush=True)
                save_rows(rows)
        finally:
            gluon_bwd.ovq_bwd_dict_gluon_kernel = real_kernel
        ms, grads = backward(False)  # again: the drift of the run, and the Triton kernel's own run-to-run error
        rows.append({"kernel": "triton", "bwd_ms": ms, "rel_err": _errors(grads, reference)})
        save_rows(rows)
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", help=f"comma-separated (default: all), of: {', '.join(EDITS)}")
    ap.add_argument("--seq-len", type=int, default=65536)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--centroids", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--check-edits", action="store_true", help="apply and load every variant; no GPU needed")
    ap.add_argument("--out", default="results/gluon_bwd_parts_h200.json")
    args = ap.parse_args(argv)
    for name in ("seq_len", "heads", "centroids", "repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    variants = source_edits.chosen_variants(ap, args.variants, EDITS)
    if args.check_edits:
        source_edits.check_edits(load_variant, variants)
        return {"variants": variants}
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
        ap.error("timing needs a Hopper GPU (the Gluon kernel's warpgroup products); --check-edits runs anywhere")
    payload = {"benchmark": "gluon_bwd_parts", "environment": environment(), "B": 1, "T": args.seq_len,
               "H": args.heads, "D": 64, "N": args.centroids, "chunk_size": 128, "dtype": "bf16",
               "edits": {name: [source_edits.shown(p) for p, _ in edits] for name, edits in EDITS.items()
                         if name in variants}}
    payload["rows"] = measure(variants, args.seq_len, args.heads, args.centroids, args.repeats,
                              saving_rows(args.out, payload, "rows"))
    print(f"{'kernel':24s} {'bwd ms':>8s}  rel. error dq dk dv dbeta")
    for row in payload["rows"]:
        errs = " ".join(f"{e:.1e}" for e in row.get("rel_err", {}).values())
        print(f"{row['kernel']:24s} {row['bwd_ms']:8.2f}  {errs}", flush=True)
    print(f"saved {save_json(args.out, payload)}")
    return payload


if __name__ == "__main__":
    main()
