"""CPU benchmark of the vectorized PyTorch op (the issue-2 reference point for the kernels).

    python -m ovq.bench.cpu            # B=1, T=4096, H=4, D=64, N=1024, L=64, float32

Prints forward and forward+backward times of ``ovq_attention`` and, for scale, exact causal attention
(``scaled_dot_product_attention``) on the same inputs; saves ``results/cpu_op.json``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from ..ops import ovq_attention
from .common import environment, save_json, time_cpu


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--max-centroids", type=int, default=1024)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="results/cpu_op.json")
    args = ap.parse_args(argv)

    shape = (args.batch, args.seq_len, args.heads, args.head_dim)
    q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
    kw = dict(chunk_size=args.chunk_size, max_centroids=args.max_centroids)

    def ovq_fwd():
        with torch.no_grad():
            ovq_attention(q, k, v, 12.0, **kw)

    def ovq_fwd_bwd():
        ovq_attention(q, k, v, 12.0, **kw)[0].sum().backward()

    def sdpa(q_, k_, v_):
        qt, kt, vt = (F.normalize(x, dim=-1).transpose(1, 2) if i < 2 else x.transpose(1, 2)
                      for i, x in enumerate((q_, k_, v_)))
        return F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=12.0)

    def sdpa_fwd():
        with torch.no_grad():
            sdpa(q, k, v)

    def sdpa_fwd_bwd():
        sdpa(q, k, v).sum().backward()

    rows = {name: time_cpu(fn, repeats=args.repeats)
            for name, fn in [("ovq_fwd", ovq_fwd), ("ovq_fwd_bwd", ovq_fwd_bwd),
                             ("sdpa_fwd", sdpa_fwd), ("sdpa_fwd_bwd", sdpa_fwd_bwd)]}
    payload = {"benchmark": "ovq.bench.cpu", "config": vars(args) | {"dtype": "float32", "beta": 12.0},
               "environment": environment(), "results": rows}
    path = save_json(args.out, payload)
    print(f"B={args.batch} T={args.seq_len} H={args.heads} D={args.head_dim} N={args.max_centroids} "
          f"L={args.chunk_size} float32, {payload['environment']['threads']} threads")
    print(f"{'op':<16}{'median ms':>12}{'min ms':>10}")
    for name, r in rows.items():
        print(f"{name:<16}{1e3 * r['median_s']:>12.1f}{1e3 * r['min_s']:>10.1f}")
    print(f"saved {path}")
    return payload


if __name__ == "__main__":
    main()
