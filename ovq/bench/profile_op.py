"""Run the op's fwd+bwd a few times at one shape, for a profiler to attach to (Nsight Compute, Nsight Systems).

The first pass compiles the kernels (and the backward probes whether its launch fits once), so profile a
later pass. The figures of ``docs/kernels.md`` (session 8) came from::

    ncu --clock-control none --kernel-name regex:"ovq_fwd_kernel|ovq_bwd_dict_kernel" --launch-skip 3 \\
        --launch-count 2 --section SpeedOfLight --section Occupancy --section SchedulerStats \\
        --section WarpStateStats --section InstructionStats --csv --page details \\
        python -m ovq.bench.profile_op --seq-len 65536 --chunk-size 128

(``--clock-control none`` because the lent GPUs' clocks cannot be locked from inside their virtual machines.)
"""

from __future__ import annotations

import argparse

import torch

from ..ops import ovq_attention


def run_passes(batch: int, seq_len: int, heads: int, head_dim: int, max_centroids: int, chunk_size: int,
               passes: int, beta: float = 12.0, dtype: torch.dtype = torch.bfloat16, device: str = "cuda",
               backend: str = "triton") -> None:
    """``passes`` forward and backward passes of :func:`ovq_attention` on seeded random inputs."""
    generator = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(batch, seq_len, heads, head_dim, device=device, dtype=dtype, generator=generator)
               .requires_grad_() for _ in range(3))
    for _ in range(passes):
        out, _ = ovq_attention(q, k, v, beta, chunk_size=chunk_size, max_centroids=max_centroids,
                               backend=backend)
        out.float().sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=65536)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--centroids", type=int, default=4096, help="max_centroids N")
    ap.add_argument("--chunk-size", type=int, default=128)
    ap.add_argument("--beta", type=float, default=12.0, help="inverse temperature (12, as the other benchmarks)")
    ap.add_argument("--passes", type=int, default=2)
    args = ap.parse_args(argv)
    for name in ("batch", "seq_len", "heads", "head_dim", "centroids", "chunk_size", "passes"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not torch.cuda.is_available():
        raise SystemExit("profile_op runs the Triton kernels: it needs a CUDA GPU")
    run_passes(args.batch, args.seq_len, args.heads, args.head_dim, args.centroids, args.chunk_size, args.passes,
               args.beta)
    print(f"ran {args.passes} fwd+bwd passes at B={args.batch} T={args.seq_len} H={args.heads} D={args.head_dim} "
          f"N={args.centroids} L={args.chunk_size}")


if __name__ == "__main__":
    main()
