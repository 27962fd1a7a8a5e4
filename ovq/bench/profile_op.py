"""Run the op's fwd+bwd a few times at one shape, for a profiler to attach to (Nsight Compute, Nsight Systems).

The first pass compiles the kernels (and the backward probes whether its launch fits once), so profile a
later pass. The figures of ``docs/kernels.md`` (session 8) came from::

    ncu --clock-control none --kernel-name regex:"ovq_fwd_kernel|ovq_bwd_dict_kernel" --launch-skip 3 \\
        --launch-count 2 --section SpeedOfLight --section Occupancy --section SchedulerStats \\
        --section WarpStateStats --section InstructionStats --csv --page details \\
        python -m ovq.bench.profile_op --seq-len 65536 --chunk-size 128

(``--clock-control none`` because the lent GPUs' clocks cannot be locked from inside their virtual machines.)

With ``--kernel-times FILE`` it profiles one more pass itself (``torch.profiler``) and prints each kernel's CUDA time
per pass, largest first, into FILE as JSON too: how session 14 found a fifth of the 64K fwd+bwd outside the kernels.
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


def kernel_times(profile_pass, device: str = "cuda") -> list[dict]:
    """Time of each kernel (by name) over one call of ``profile_pass``, largest first: ms and launches. On
    ``device="cpu"`` the CPU operators' own time instead (what the tests can run)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        profile_pass()
    rows = []
    for event in prof.key_averages():
        us = event.self_device_time_total if cuda else event.self_cpu_time_total
        if us > 0:
            rows.append({"kernel": event.key, "ms": us / 1000, "launches": event.count})
    return sorted(rows, key=lambda r: -r["ms"])


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
    ap.add_argument("--kernel-times", metavar="FILE", default=None,
                    help="then profile one more pass with torch.profiler: CUDA ms per kernel, printed and saved as JSON")
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
    if args.kernel_times:
        from .common import environment, save_json
        rows = kernel_times(lambda: run_passes(args.batch, args.seq_len, args.heads, args.head_dim, args.centroids,
                                               args.chunk_size, 1, args.beta))
        print(f"one pass: {sum(r['ms'] for r in rows):.2f} ms of CUDA time")
        for r in rows[:15]:
            print(f"{r['ms']:9.3f} ms  x{r['launches']:<4d} {r['kernel'][:90]}")
        save_json(args.kernel_times, {"args": vars(args), "environment": environment(), "kernels": rows})


if __name__ == "__main__":
    main()
