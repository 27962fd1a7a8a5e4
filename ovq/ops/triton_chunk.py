"""The Triton path of ``ovq_attention`` / ``vq_attention``: schedule, launches and the autograd Function.

It computes the same function as :func:`ovq.ops.scan.chunk_scan` (the PyTorch path) and returns the
same state. Kernels live in :mod:`ovq.ops.kernels`. On CPU it runs under ``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .state import DictionaryState, OVQState, VQState
from .utils import new_centroid_count

BLOCK_CENTROIDS = 64
# Keys per step of the in-chunk attention, forward and backward (an L x L tile would not fit on chip for large L);
# tests lower it to cover several steps at small L.
LOCAL_BLOCK = 64
# Launch settings (num_warps, num_stages) per kernel, keyed by the smallest chunk size each applies from;
# ovq.bench.kernels overrides them to compare. The forward takes 8 warps from L = 128 on: at T = 64K (H200,
# results/kernel_variants_s6_h200.json) they ran L = 128/256/512 in 39/46/86 ms against 4 warps' 67/101/246
# ms (4 warps spill far more at these L); at L = 64 4 warps were faster (61 vs 66 ms). The backward kernels
# follow: compiled for the H200 at L = 128 they spill 1.1-1.9 KB per thread with 4 warps and at most 80 bytes
# with 8 (results/kernel_resources_bwd_sm90_cpu.json; not yet timed).
LAUNCH = {"fwd": {1: (4, 2), 128: (8, 2)}, "fwd_local": {1: (4, 1), 128: (8, 1)}, "bwd_local": {1: (4, 1), 128: (8, 1)},
          "bwd_dict": {1: (4, 2), 128: (8, 2)}}


def launch_settings(name: str, chunk_size: int) -> tuple[int, int]:
    """(num_warps, num_stages) of kernel ``name`` at this chunk size, from :data:`LAUNCH`."""
    by_chunk = LAUNCH[name]
    return by_chunk[max(c for c in by_chunk if c <= max(chunk_size, 1))]


def triton_available() -> bool:
    try:
        import triton  # noqa: F401 - only whether it imports
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(x: torch.Tensor) -> bool:
    """The kernels serve CUDA tensors of 16/32-bit floats (float64 stays on the PyTorch path)."""
    return (x.is_cuda and x.dtype in (torch.float16, torch.bfloat16, torch.float32) and triton_available()
            and os.environ.get("OVQ_DISABLE_TRITON", "0") != "1")


@functools.lru_cache(maxsize=256)
def _schedule(total: int, chunk_size: int, num_active: int, num_absorbed: int, max_centroids: int,
              growth: str, growth_rate: float, static: bool) -> tuple[tuple[int, int], ...]:
    """Per chunk of the (buffer + new tokens) stream: (active centroids read, centroids opened)."""
    rows = []
    m = num_active
    for c in range(math.ceil(total / chunk_size)):
        full = (c + 1) * chunk_size <= total
        if static:
            rows.append((max_centroids, 0))
            continue
        n_new = new_centroid_count(m, num_absorbed + (c + 1) * chunk_size, chunk_size, max_centroids, growth,
                                   growth_rate) if full else 0
        rows.append((m, n_new))
        m += n_new
    return tuple(rows)


def _pow2(x: int) -> int:
    """Tile size for a dimension of x: the next power of two, at least 16 (tl.dot's minimum)."""
    return max(16, 1 << max(0, (x - 1).bit_length()))


@dataclass(frozen=True)
class KernelConfig:
    chunk_size: int
    capacity: int
    num_heads: int
    count_prior: bool
    static: bool
    detach: bool
    read_precision: str
    assign_precision: str
    fwd_slices: int
    bwd_slices: int
    fwd_block: int  # centroids per block of the forward's loop (the backward's are BLOCK_CENTROIDS)
    cached: bool = False
    two_pass: bool = False
    gram_picks: bool = False
    ordered_scatter: bool = False


# The assignment's similarity precision for 16-bit inputs on the GPU: "bf16x3" (hi/lo bfloat16 split,
# three products, ~16 mantissa bits) ranks centroids like the float32 PyTorch op up to near-ties below
# ~1e-5; "tf32x3", "tf32" and "bf16" are the alternatives ovq.bench.kernels measures. The interpreter
# (CPU tests) cannot run bf16 products correctly, so it uses plain float32 there.
ASSIGN_PRECISION = "bf16x3"


def _precisions(dtype: torch.dtype) -> tuple[str, str]:
    """Read dots in the input's precision; assignment similarities float32-accurate."""
    read = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "ieee")
    return read, ("ieee" if dtype == torch.float32 or interpreting() else ASSIGN_PRECISION)


# Forward programs the slicing may place on one SM. They must all be resident at once (spin barrier), so
# more than 1 is safe only when registers and shared memory allow it: ovq.bench.kernels checks that from
# the compiled kernel before it times 2 (not the default until measured faster).
FWD_PROGRAMS_PER_SM = 1

# The forward keeps each slot's product operands (unit key direction in the read's and the assignment's
# precisions, value mean) in side buffers, refreshed only for the slots a chunk changes, instead of
# normalizing and splitting every block of float32 sums in every chunk. The same values either way. On the
# H200 at 64K it took the forward from 60.5 to 49.0 ms at L = 64 and 39.2 to 35.4 ms at L = 128, with bf16
# near-ties no more frequent than the default's against the float32 op (bench.ops --check: 2.4e-4 of
# count slots both; results/ops_check_cached_h200.json), so it is the default.
FWD_CACHED_OPERANDS = True
# The forward's two jobs per block (the read's online softmax, the write's best centroid per key) in two
# loops over the slice instead of one: fewer values live at once (the compiled forward spills registers),
# and with cached operands the two loops read disjoint buffers. Timed by ovq.bench.kernels; off until faster.
FWD_TWO_PASS = False
# The farthest-point picks read each pick's similarities to the chunk's keys from the chunk's Gram matrix, one
# product per chunk stored in a scratch buffer, instead of a key load and a reduction over D per pick, and keep
# their state once per warp, so a pick's argmin needs no barrier (per pick 159 -> 89 instructions and 3 -> 0
# barriers at L = 128 on sm_90). The product pays only where chunks open many centroids: on an H200 (session 12,
# D = 64, L = 128, N = 4,096, fwd+bwd) 4K took 26.78 ms with it and 28.62 without (64 picks per chunk), 64K
# 58.09 with and 54.91 without (8.5 per chunk that picks); the choice made per chunk inside one kernel, at 16,
# was 27.14 and 56.35 (the kernel holding both ways is slower). So it is chosen per launch, by gram_picks.
FWD_GRAM_PICKS = True
# The fewest centroids per chunk that opens any, on average over a launch, for which the picks read the Gram
# matrix: between the measured 8.5 (slower with it) and 64 (faster), near the break-even those two timings give
# (a product costs ~17 picks' worth).
GRAM_MIN_PICKS = 16


def gram_picks(static: bool, chunk_size: int, sched_rows) -> bool:
    """Whether the forward's picks read the chunk's Gram matrix: FWD_GRAM_PICKS, not VQ (it never picks), chunks of
    at most 128 tokens padded to a power of two (the [L, L] product fits in registers), and the launch's chunks
    that open centroids open at least GRAM_MIN_PICKS of them on average. ``sched_rows``: (active, opened) per
    chunk, as ``_schedule`` gives them."""
    if not FWD_GRAM_PICKS or static or _pow2(chunk_size) > 128:
        return False
    opened = [n for _, n in sched_rows if n > 0]
    return bool(opened) and sum(opened) >= GRAM_MIN_PICKS * len(opened)


# The forward adds each chunk's tokens to their slots' sums in a fixed order (each slot's tokens summed by a one-hot
# product, added once) instead of with float atomics, whose order varies: with atomics the sums differ in their last
# bits from run to run, near-tied assignments flip, and at 16K tokens and beyond two runs of one input drift apart
# (session 14 on an H200: at 64K 14-18% of the count slots and 4-9% of the output differ;
# results/s14_run_to_run_h200.log). Timed there (D = 64, N = 4,096, L = 128; results/s14_ordered_scatter_h200.json):
# fwd+bwd at 64K 52.42 ms against 44.28 (the forward 27.41 against 19.24), at 4K 19.12 against 17.77; two runs then
# give bitwise the same output, sums and counts. So it is off unless asked for, here or by
# torch.use_deterministic_algorithms(True).
FWD_ORDERED_SCATTER = False


def ordered_scatter() -> bool:
    """Whether the forward scatters in a fixed order: FWD_ORDERED_SCATTER, or PyTorch's deterministic mode. (The
    backward still adds with float atomics: its gradients differ run to run by ~1e-5 relative, and no decision
    depends on them.)"""
    return FWD_ORDERED_SCATTER or torch.are_deterministic_algorithms_enabled()


def padded_capacity(capacity: int, slices: int, block: int | None = None) -> int:
    """Rows per bh of the kernels' per-slot buffers padded so that each slice holds whole blocks of ``block``
    slots (BLOCK_CENTROIDS by default; the kernels compute the same, ``kernels._padded_rows``), so that blocks are
    read whole, without masks; the padded rows hold empty slots."""
    block = block or BLOCK_CENTROIDS
    return math.ceil(capacity / (slices * block)) * slices * block


# The forward's centroid block width where one program reads a (b, h)'s whole dictionary (one slice). Measured on an
# H200 (session 15, D = 64, N = 4,096, L = 128, bf16; results/s15_fwd_block_h200.json): at 4K (B = 16, one slice)
# 128 took the forward from 8.02 to 7.49 ms; at 64K (8 slices of 512 slots, where a slice's last, partly active
# block wastes more of a wider one) it was slower, 20.77 against 20.00, and 32 slower at both (22.76, 9.32). Wider
# tiles mean fewer barriers and reductions per centroid; only measured at D <= 64 and L <= 128.
FWD_WIDE_BLOCK = 128


def fwd_block(slices: int, head_dim: int, chunk_size: int, device: torch.device) -> int:
    """Centroids per block of the forward's loop: FWD_WIDE_BLOCK with one slice on a GPU (at D <= 64, L <= 128),
    else BLOCK_CENTROIDS."""
    if slices == 1 and device.type == "cuda" and not interpreting() and head_dim <= 64 and chunk_size <= 128:
        return max(FWD_WIDE_BLOCK, BLOCK_CENTROIDS)
    return BLOCK_CENTROIDS


def merge_rows(block_l: int, slices: int) -> int:
    """How many of a chunk's rows each forward slice merges into the output (all of them with one slice): the
    NB slices' shares, a power of two each, cover the chunk's BL rows."""
    return 1 << max(0, math.ceil(block_l / slices) - 1).bit_length()


# Dictionary-backward programs per SM the slicing aims at. It has no barrier, so more than fit at once just queue,
# but at L = 128 one program fills an SM's registers and shared memory, so 2 means two waves of programs that each
# repeat the per-chunk work (loads of the chunk's rows, the rewind, dq's atomic adds) for half the slots. On an H200
# (session 14, fwd+bwd at 64K, D = 64, N = 4,096; results/s14_bwd_launch_variants_h200.json) 1 took 44.41 ms, 2
# 45.72, 4 52.69; with 4 warps (two programs fit an SM) 78.3. At 4K (one slice per (b, h) either way) no change.
BWD_PROGRAMS_PER_SM = 1
# The dictionary backward keeps each slot's read operands (unit direction and value mean in the read's precision,
# 1/|sum_k| and 1/count) in side buffers, refreshed for the slots each chunk's rewind changes, instead of loading,
# normalizing and dividing the float32 sums in every block. On an H200 (session 19, D = 64, N = 4,096, L = 128;
# results/s19_bwd_cached_*.json) fwd+bwd at 64K took 41.76 / 42.07 ms with it and 44.44 without, at 4K 16.20 / 16.24
# and 17.01. Its projection of G_k takes the direction rounded to the read's precision; in float32 it is the same
# function, and in bf16 its gradients are as far from the PyTorch op's as the uncached backward's (session 20,
# results/s20_check_bf16_h200.json: dk 4.71e-3, 4.62e-3, 4.78e-3 against 4.70e-3, 4.61e-3, 4.79e-3).
BWD_CACHED_OPERANDS = True
BWD_MAX_SLICES = 32


def _slices(bh: int, capacity: int, device: torch.device) -> tuple[int, int]:
    """How many programs share one (batch, head)'s dictionary, forward and backward.

    The forward's slices meet at a spin barrier every chunk, so all its programs must be resident at
    once: at most ``FWD_PROGRAMS_PER_SM`` per SM. The backward has no barrier and may oversubscribe.
    """
    if interpreting() or device.type != "cuda":
        return 1, min(2, math.ceil(capacity / BLOCK_CENTROIDS))
    return slices_for(bh, capacity, torch.cuda.get_device_properties(device).multi_processor_count)


def slices_for(bh: int, capacity: int, sms: int) -> tuple[int, int]:
    """:func:`_slices` on a GPU of ``sms`` multiprocessors (also what ``ovq.bench.resources`` compiles for)."""
    blocks = math.ceil(capacity / BLOCK_CENTROIDS)
    bh = max(bh, 1)  # an empty batch launches nothing, but still asks
    fwd = max(1, min((FWD_PROGRAMS_PER_SM * sms) // bh, blocks, 16 * FWD_PROGRAMS_PER_SM))
    bwd = max(1, min((BWD_PROGRAMS_PER_SM * sms) // bh, blocks, BWD_MAX_SLICES))
    return fwd, bwd


class KernelResourceError(ValueError):
    """The GPU lacks the registers or shared memory to compile the kernels for this configuration: a chunk's
    tokens live on chip as product operands, so a large chunk size with a large head size does not fit (at
    L = 512, D = 64 the backward kernels ask 327,680 bytes of shared memory; an H200 allows 232,448)."""


def _launch(name: str, kernel, grid, chunk_size: int, d: int, dv: int, *args, **constexprs) -> None:
    """Launch ``kernel`` with its :func:`launch_settings` at this chunk size. If it does not load for lack of shared
    memory or registers, retry without software pipelining (``num_stages=1`` holds one stage of buffers instead of
    two); if that fails too, raise a :class:`KernelResourceError` naming the cause."""
    try:
        from triton.runtime.errors import OutOfResources
    except ImportError:  # no Triton: nothing to translate
        OutOfResources = ()
    warps, stages = launch_settings(name, chunk_size)
    for attempt in dict.fromkeys([stages, 1]):  # the configured stages, then 1
        try:
            kernel[grid](*args, **constexprs, num_warps=warps, num_stages=attempt)
            return
        except OutOfResources as e:
            # without its traceback: the traceback's frames (this one and its callers, holding the op's
            # tensors) and this local would form a cycle that keeps them alive until the garbage collector
            # runs; at D = 128 (a retried launch every call) that held ~30 GB per training step on an H200
            error = e.with_traceback(None)
    raise KernelResourceError(
        f"the {name} kernel does not fit on this GPU with chunk_size={chunk_size}, head sizes D={d}, Dv={dv} "
        f"({error}); use a smaller chunk_size (256 runs at D = 64 on an H200) or backend='torch'") from error


_DOES_NOT_FIT: set = set()  # configurations whose kernels failed to load on a device (not retried)


def kernel_scan_or_fallback(backend: str, q, k, v, beta, state: DictionaryState, **kwargs):
    """:func:`triton_chunk_scan`, or ``None`` when ``backend="auto"`` and the kernels do not fit this
    configuration on the GPU (with a warning, once; the caller then runs the PyTorch op). With
    ``backend="triton"`` the :class:`KernelResourceError` propagates."""
    key = (v.device, state.chunk_size, q.shape[-1], v.shape[-1], q.dtype,
           kwargs.get("codebook") is not None, torch.is_grad_enabled())  # a backward may not fit where a forward does
    if backend == "auto" and key in _DOES_NOT_FIT:
        return None
    try:
        return triton_chunk_scan(q, k, v, beta, state, **kwargs)
    except KernelResourceError as e:
        if backend == "triton":
            raise
        _DOES_NOT_FIT.add(key)
        warnings.warn(f"{e}: running the PyTorch op instead", stacklevel=3)
        return None


def _read_dtype(cfg: KernelConfig) -> torch.dtype:
    """The operand type of the read's products (the kernels' READ_PREC)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.read_precision, torch.float32)


# With bf16 reads and bf16x3 assignment the cached forward's read direction (the float32 direction rounded to bf16)
# and the assignment's hi part are the same bits: FWD_SHARED_DIRECTION keeps them in one buffer and loads each block's
# once for both products. Compiled for sm_90 (session 19, on the CPU): the 64K forward's block loop 575 -> 548
# instructions with 8 async copies instead of 10 and 16 KB less shared memory (122,880 -> 106,496 B); at 4K's launch
# 947 -> 924 and 229,376 -> 196,608 B. The same function (a GPU test holds it bitwise). On an H200 (session 20,
# results/s20_ab_*.json, alternated) the forward at 64K took 18.03 ms against 19.79 / 19.21 without, at 4K 6.74
# against 6.97 / 6.99; with the cached backward, fwd+bwd 40.49 / 39.84 against 43.78 / 43.80 (4K 15.68 / 15.60
# against 16.56 / 16.59).
FWD_SHARED_DIRECTION = True


def shared_direction(cfg: KernelConfig) -> bool:
    """Whether the cached forward's read direction serves as the assignment's hi part (FWD_SHARED_DIRECTION, bf16
    reads, bf16x3 assignment)."""
    return (FWD_SHARED_DIRECTION and cfg.cached and cfg.read_precision == "bf16"
            and cfg.assign_precision == "bf16x3")


def _operand_buffers(cfg: KernelConfig, bh: int, bd: int, bdv: int, device) -> tuple[torch.Tensor, ...]:
    """Side buffers of the cached forward (read direction, assignment direction hi and lo, value mean per
    slot, padded to the tile widths; per slot the logit offset row [hi, lo, 0, ...] and [0 or -inf, 0, ...]
    for opened or not), or 1-element stand-ins when it is off. Their rows are padded so that each of the
    forward's slices holds whole blocks of BLOCK_CENTROIDS, and start as unopened slots (the kernel reads whole
    blocks without masks)."""
    from .kernels import OFFW

    if not cfg.cached:
        unused = torch.zeros(1, device=device, dtype=torch.float32)
        return unused, unused, unused, unused, unused
    read = _read_dtype(cfg)
    split = cfg.assign_precision == "bf16x3"
    n = padded_capacity(cfg.capacity, cfg.fwd_slices, cfg.fwd_block)
    read_directions = torch.zeros(bh, n, bd, device=device, dtype=read)
    # (one buffer for both where they are the same bits: the refresh writes it twice, alike)
    assign = (read_directions if shared_direction(cfg)
              else torch.zeros(bh, n, bd, device=device, dtype=torch.bfloat16 if split else torch.float32))
    low = (torch.zeros(bh, n, bd, device=device, dtype=torch.bfloat16) if split
           else torch.zeros(1, device=device, dtype=torch.float32))
    offsets = torch.zeros(bh, n, 2 * OFFW.value, device=device, dtype=read)
    offsets[..., 0] = offsets[..., OFFW.value] = float("-inf")  # unopened: read as empty, never assigned
    return read_directions, assign, low, torch.zeros(bh, n, bdv, device=device, dtype=read), offsets


class ChunkFunction(torch.autograd.Function):
    """The op on the caller's q, k, v [B, T, H, ·] (any float dtype), after P buffered tokens (``lead_k``,
    ``lead_v`` [B, H, P, ·], unit keys): returns o [B, T, H, Dv] in q's dtype, the final sums and counts, and the
    head-first float32 keys and values [B*H, P + T, ·] the scan used (the final state's buffer is their tail)."""

    @staticmethod
    def forward(ctx, q, k, v, beta, lead_k, lead_v, sum_k0, sum_v0, count0, codebook, sched, cfg: KernelConfig,
                m0: int):
        from .kernels import ovq_fwd_kernel, ovq_fwd_local_kernel
        from .layout import from_head_first, to_head_first

        ctx.set_materialize_grads(False)
        batch = q.shape[0]
        # buffered tokens were answered before: their query rows are zeros and their output rows dropped
        qhat, q_norm, _ = to_head_first(q, lead_k.shape[2], normalize=True)
        khat, k_norm, _ = to_head_first(k, lead_k, normalize=True)
        vals, _, _ = to_head_first(v, lead_v, normalize=False)
        bh, total, d = khat.shape
        dv = vals.shape[-1]
        n = cfg.capacity
        # (the state's rows may come as a strided view: the kernels' buffers are contiguous)
        if cfg.static:
            sum_k, sum_v, count = (x.clone(memory_format=torch.contiguous_format) for x in (sum_k0, sum_v0, count0))
        else:  # slots past the active ones are opened by plain adds: they must start at zero
            sum_k, sum_v, count = (torch.zeros(x.shape, device=x.device, dtype=x.dtype)
                                   for x in (sum_k0, sum_v0, count0))
            for t, t0 in ((sum_k, sum_k0), (sum_v, sum_v0), (count, count0)):
                t[:, :m0] = t0[:, :m0]
        o = torch.empty(bh, total, dv, device=v.device, dtype=torch.float32)
        lse = torch.empty(bh, total, device=v.device, dtype=torch.float32)
        z = torch.empty(bh, total, device=v.device, dtype=torch.int32)
        bl, bd, bdv = _pow2(cfg.chunk_size), _pow2(d), _pow2(dv)
        nb = cfg.fwd_slices
        xshape = (bh, 2, nb, bl)
        xstat = torch.empty(*xshape, 2, device=v.device, dtype=torch.float32)
        xacc = torch.empty(*xshape, bdv, device=v.device, dtype=torch.float32)
        # each key's best (similarity, slot) over the slices, packed, three chunks in turn; starts below any pair
        xbest = torch.full((bh, 3, bl), torch.iinfo(torch.int64).min, device=v.device, dtype=torch.int64)
        barrier = torch.zeros(bh, device=v.device, dtype=torch.int32)
        crd, chi, clo, cmv, cpr = _operand_buffers(cfg, bh, bd, bdv, v.device)
        # each program's scratch for its chunk's key similarities and 3 rows of pick state (FWD_GRAM_PICKS)
        gram = torch.empty(bh * nb * (bl + 3) * bl if cfg.gram_picks else 1, device=v.device, dtype=torch.float32)
        if total > 0:
            kw = dict(D=d, DV=dv, L=cfg.chunk_size, BL=bl, BD=bd, BDV=bdv, READ_PREC=cfg.read_precision)
            # each chunk's attention to its own keys, in parallel over chunks, into o and lse; the scan merges it
            _launch("fwd_local", ovq_fwd_local_kernel, (sched.shape[0], bh), cfg.chunk_size, d, dv,
                    qhat, khat, vals, beta, o, lse, total, cfg.num_heads, **kw, KB=min(bl, LOCAL_BLOCK))
            _launch("fwd", ovq_fwd_kernel, (nb, bh), cfg.chunk_size, d, dv,
                    qhat, khat, vals, beta, sum_k, sum_v, count, codebook if cfg.static else sum_k, sched,
                    o, lse, z, xstat, xacc, xbest, barrier, crd, chi, clo, cmv, cpr, gram,
                    total, n, cfg.num_heads, sched.shape[0], **kw, BN=cfg.fwd_block, NB=nb,
                    COUNT_PRIOR=cfg.count_prior, STATIC=cfg.static, ASSIGN_PREC=cfg.assign_precision,
                    CACHED=cfg.cached, TWO_PASS=cfg.two_pass, GRAM_PICKS=cfg.gram_picks, MERGE_ROWS=merge_rows(bl, nb),
                    ORDERED_SCATTER=cfg.ordered_scatter, HI_IS_READ=shared_direction(cfg))
        ctx.save_for_backward(qhat, khat, vals, q_norm, k_norm, beta, o, lse, z, sum_k, sum_v, count, codebook, sched)
        ctx.cfg, ctx.m0, ctx.batch, ctx.lead = cfg, m0, batch, lead_k.shape[2]
        ctx.dtypes = (q.dtype, k.dtype, v.dtype)
        ctx.mark_non_differentiable(count)
        return from_head_first(o, batch, cfg.num_heads, ctx.lead, q.dtype), sum_k, sum_v, count, khat, vals

    @staticmethod
    def backward(ctx, do, d_sum_k, d_sum_v, _d_count, d_keys, d_vals):
        from .layout import from_head_first, to_head_first

        qhat, khat, vals, q_norm, k_norm, beta, o, lse, z, sum_k, sum_v, count, codebook, sched = ctx.saved_tensors
        batch, lead, cfg = ctx.batch, ctx.lead, ctx.cfg
        bh, total, d = khat.shape
        dv = vals.shape[-1]
        h = cfg.num_heads
        if do is None:
            do_hf, delta = torch.zeros_like(o), torch.zeros(bh, total, device=o.device)
        else:
            do_hf, _, delta = to_head_first(do, lead, normalize=False, o=o)
        dq, dk, dvals, dbeta, d_sum_k0, d_sum_v0 = _backward(
            (qhat, khat, vals, beta, o, lse, z, sum_k, sum_v, count, codebook, sched), cfg, ctx.m0, do_hf, delta,
            d_sum_k, d_sum_v)
        if d_keys is not None:  # the final state's buffer was used downstream
            dk += d_keys
        if d_vals is not None:
            dvals += d_vals
        q_dtype, k_dtype, v_dtype = ctx.dtypes
        return (from_head_first(dq, batch, h, lead, q_dtype, qhat, q_norm),
                from_head_first(dk, batch, h, lead, k_dtype, khat, k_norm),
                from_head_first(dvals, batch, h, lead, v_dtype), dbeta,
                dk[:, :lead].reshape(batch, h, lead, d), dvals[:, :lead].reshape(batch, h, lead, dv),
                d_sum_k0, d_sum_v0, None, None, None, None, None)


def _gluon_backward(cfg: KernelConfig, d: int, dv: int, slices: int, v: torch.Tensor) -> bool:
    """Whether the dictionary backward runs ``gluon_bwd``'s kernel (opt-in, ``OVQ_GLUON_BWD=1``; compiled, on Hopper:
    its products are warpgroup MMAs)."""
    if (os.environ.get("OVQ_GLUON_BWD", "0") != "1" or interpreting() or not v.is_cuda
            or torch.cuda.get_device_capability(v.device)[0] != 9):
        return False
    from . import gluon_bwd
    return gluon_bwd.applies(d, dv, cfg.chunk_size, cfg.read_precision, cfg.detach,
                             gluon_bwd.slice_blocks(cfg.capacity, slices))


def _backward(saved, cfg: KernelConfig, m0: int, do, delta, d_sum_k, d_sum_v) -> tuple:
    """The kernels' gradients, head-first float32 (``saved``: the forward's head-first tensors, as
    :class:`ChunkFunction` keeps them; ``do`` the output's gradient head-first, ``delta`` its row term dO . O)."""
    from .kernels import OFFW, ovq_bwd_dict_kernel, ovq_bwd_local_kernel

    qhat, khat, v, beta, o, lse, z, sum_k, sum_v, count, codebook, sched = saved
    bh, total, d = khat.shape
    dv = v.shape[-1]
    n = cfg.capacity
    chunks = sched.shape[0]
    bl, bd, bdv = _pow2(cfg.chunk_size), _pow2(d), _pow2(dv)
    kw = dict(D=d, DV=dv, L=cfg.chunk_size, BL=bl, BD=bd, BDV=bdv, READ_PREC=cfg.read_precision)
    # every row is stored by the in-chunk backward, then the dictionary backward adds its share
    dq, dk, dvals = (torch.empty_like(x) for x in (qhat, khat, v))
    dbeta_local = torch.zeros(bh, chunks, device=v.device, dtype=torch.float32)
    if total > 0:
        _launch("bwd_local", ovq_bwd_local_kernel, (chunks, bh), cfg.chunk_size, d, dv,
                qhat, khat, v, beta, do, lse, delta, dq, dk, dvals, dbeta_local,
                total, cfg.num_heads, chunks, **kw, KB=min(bl, LOCAL_BLOCK))
    nb = cfg.bwd_slices
    g_k = torch.zeros_like(sum_k) if d_sum_k is None else d_sum_k.float().clone()
    g_v = torch.zeros_like(sum_v) if d_sum_v is None else d_sum_v.float().clone()
    dbeta_dict = torch.zeros(bh, nb, device=v.device, dtype=torch.float32)
    if total > 0:
        # scratch the reverse scan rewinds, with rows padded to whole blocks in every slice: empty slots there
        padded = padded_capacity(n, nb)
        pad = lambda x: F.pad(x, (0, 0) * (x.dim() - 2) + (0, padded - n))  # noqa: E731 - rows are dim 1
        scratch = (pad(sum_k) if not cfg.static else sum_k, pad(sum_v), pad(count),
                   pad(codebook.view(cfg.num_heads, n, d)) if cfg.static else sum_k)
        if _gluon_backward(cfg, d, dv, nb, v):
            from . import gluon_bwd
            offsets = torch.empty(bh, padded, device=v.device, dtype=torch.float32)  # (the kernel fills them)
            gluon_bwd.launch((qhat, khat, v, beta, do, lse, delta, z, sched, *scratch, g_k, g_v, offsets, dq, dk,
                              dvals, dbeta_dict), total=total, capacity=n, num_heads=cfg.num_heads, chunks=chunks,
                             padded=padded, slices=nb, bh=bh, count_prior=cfg.count_prior, static=cfg.static,
                             fp16=cfg.read_precision == "fp16")
        else:
            offset_rows = torch.zeros(bh, padded, OFFW.value, device=v.device, dtype=_read_dtype(cfg))
            offset_rows[..., 0] = float("-inf")  # (the kernel stores the rows of slots < N from their counts)
            if BWD_CACHED_OPERANDS:  # per slot: direction and value mean in the read's type, [1/|sum_k|, 1/count]
                cached = (torch.zeros(bh, padded, bd, device=v.device, dtype=_read_dtype(cfg)),
                          torch.zeros(bh, padded, bdv, device=v.device, dtype=_read_dtype(cfg)),
                          torch.zeros(bh, padded, 2, device=v.device, dtype=torch.float32))
            else:
                cached = (torch.zeros(1, device=v.device, dtype=torch.float32),) * 3
            _launch("bwd_dict", ovq_bwd_dict_kernel, (nb, bh), cfg.chunk_size, d, dv,
                    qhat, khat, v, beta, do, lse, delta, z, sched, *scratch, g_k, g_v, offset_rows, *cached,
                    dq, dk, dvals, dbeta_dict, total, n, cfg.num_heads, chunks,
                    BN=BLOCK_CENTROIDS, NB=nb, COUNT_PRIOR=cfg.count_prior, STATIC=cfg.static, DETACH=cfg.detach,
                    CACHED=BWD_CACHED_OPERANDS, **kw)
    dbeta = (dbeta_local.sum(-1) + dbeta_dict.sum(-1)).view(-1, cfg.num_heads).sum(0)
    if cfg.detach:
        d_sum_k0 = d_sum_v0 = None
    else:
        if not cfg.static:  # slots opened during this call did not exist in the initial state
            g_k[:, m0:] = 0
            g_v[:, m0:] = 0
        d_sum_k0, d_sum_v0 = (None if cfg.static else g_k), g_v
    return dq, dk, dvals, dbeta, d_sum_k0, d_sum_v0


_BACKWARD_FITS: dict = {}  # (device, config, D, Dv, launch settings) -> whether the backward kernels load there


def backward_fits(cfg: KernelConfig, d: int, dv: int, device: torch.device) -> bool:
    """Whether this configuration's backward kernels load on ``device``, found once by running them on one
    chunk of zeros (what they compile to depends on the tile sizes and options, not on T, N or the batch).
    Asked before a forward that will need a backward, so a chunk too large for the backward is known while
    the PyTorch op can still take over, not halfway through ``loss.backward()``."""
    key = (device, cfg, d, dv, BLOCK_CENTROIDS, LOCAL_BLOCK, launch_settings("bwd_local", cfg.chunk_size),
           launch_settings("bwd_dict", cfg.chunk_size), BWD_CACHED_OPERANDS, os.environ.get("OVQ_GLUON_BWD", "0"))
    if key not in _BACKWARD_FITS:
        L, n, h = cfg.chunk_size, cfg.capacity, cfg.num_heads
        zeros = lambda *shape, dtype=torch.float32: torch.zeros(*shape, device=device, dtype=dtype)  # noqa: E731
        codebook = zeros(h * n * d) if cfg.static else zeros(1)
        saved = (zeros(h, L, d), zeros(h, L, d), zeros(h, L, dv), zeros(h), zeros(h, L, dv), zeros(h, L),
                 zeros(h, L, dtype=torch.int32) - 1, zeros(h, n, d), zeros(h, n, dv), zeros(h, n), codebook,
                 zeros(1, 2, dtype=torch.int32))  # one sequence of h heads, one chunk, no centroid yet
        try:
            _backward(saved, cfg, 0, zeros(h, L, dv), zeros(h, L), None, None)
            _BACKWARD_FITS[key] = True
        except KernelResourceError:
            _BACKWARD_FITS[key] = False
    return _BACKWARD_FITS[key]


# The kernels' per-slot buffers (sums, counts, cached operands, gradient accumulators and their scratch copies) hold
# only the slots a call can open, not the capacity N: at T = 4K with N = 4,096 that is 2,048 (the saturating growth's
# M(4,096)), and their zero fills and copies were ~0.9 ms of a 17 ms fwd+bwd at B = 16 (session 19's profile). On an
# H200 (session 19, B·T = 65,536, results/s19_trim_*.json) fwd+bwd went 15.40 -> 14.34 ms at 2K and 17.20 -> 16.84 at
# 4K, peak memory 5.22 -> 3.19 and 3.68 -> 3.02 GiB. False gives every call N rows, as before (for an A/B).
TRIM_CAPACITY = True


def used_slots(sched_rows, m0: int, capacity: int, static: bool) -> int:
    """Rows the kernels' per-slot buffers need: the slots active after the call's last chunk (at least one, at
    most ``capacity``), or ``capacity`` for VQ (its codebook is whole from the start) and without TRIM_CAPACITY."""
    if static or not TRIM_CAPACITY:
        return capacity
    last_active, last_opened = sched_rows[-1] if sched_rows else (m0, 0)
    return min(capacity, max(1, m0, last_active + last_opened))


def triton_chunk_scan(q, k, v, beta, state: DictionaryState, *, count_prior: bool, detach_state: bool,
                      output_final_state: bool, codebook: torch.Tensor | None = None):
    """The kernel version of ``chunk_scan`` on the caller's q, k, v ``[B, T, H, ·]`` (any float dtype; q and k are
    unit-normalized inside, and q's dtype sets the precision of the read's products); returns (o, state), o in
    q's layout and dtype.

    The configuration (chunk size, capacity, growth rule) is the state's. ``codebook`` selects the static
    (VQ) variant.
    """
    b, length, h, d = q.shape
    dv = v.shape[-1]
    static = codebook is not None
    p, chunk = state.buffer_len, state.chunk_size
    capacity = state.capacity
    total = p + length
    m0 = capacity if static else state.num_centroids
    growth, growth_rate = ("saturating", 1.0) if static else (state.growth, state.growth_rate)
    rows = _schedule(total, chunk, m0, state.num_absorbed, capacity, growth, float(growth_rate), static)
    sched = torch.tensor(rows, dtype=torch.int32, device=v.device).reshape(-1, 2)
    read, assign = _precisions(q.dtype)
    slots = used_slots(rows, m0, capacity, static)
    fwd_slices, bwd_slices = _slices(b * h, slots, v.device)
    cfg = KernelConfig(chunk, slots, h, count_prior, static, detach_state, read, assign, fwd_slices, bwd_slices,
                       fwd_block(fwd_slices, max(d, dv), chunk, v.device), FWD_CACHED_OPERANDS, FWD_TWO_PASS,
                       gram_picks(static, chunk, rows), ordered_scatter())
    beta_h = (beta.reshape(-1).expand(h) if isinstance(beta, torch.Tensor)
              else torch.full((h,), float(beta), device=v.device)).float().contiguous()
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(x, torch.Tensor) and x.requires_grad
        for x in (q, k, v, beta, state.sum_v, state.buffer_k, state.buffer_v, None if static else state.sum_k))
    if needs_grad and not backward_fits(cfg, d, dv, v.device):
        raise KernelResourceError(f"the backward kernels do not fit on this GPU with chunk_size={chunk}, head "
                                  f"sizes D={d}, Dv={dv}; use a smaller chunk_size or backend='torch'")

    def flat(x):  # the state's first ``slots`` rows, [B * H, slots, ...] (a view of a float32 state: the forward
        # copies the active rows into its own buffers, and VQ's, all rows, are its whole state)
        return x[:, :, :slots].reshape(b * h, slots, *x.shape[3:]).float()

    unused = torch.zeros(1, device=v.device)  # stands in for the tensor a variant does not have
    if static:
        sum_k0, cb = unused, codebook.detach().float().contiguous()  # the codebook gets no gradient here
    else:
        sum_k0, cb = flat(state.sum_k.detach() if detach_state else state.sum_k), unused
    sum_v0 = state.sum_v.detach() if detach_state else state.sum_v
    o, sum_k, sum_v, count, keys, vals = ChunkFunction.apply(
        q, k, v, beta_h, state.buffer_k[:, :, :p], state.buffer_v[:, :, :p], sum_k0, flat(sum_v0), flat(state.count),
        cb, sched, cfg, m0)
    if not output_final_state:
        return o, None
    if slots < capacity:  # the final state holds every slot, the unopened ones empty
        sum_k, sum_v, count = (F.pad(x, (0, 0) * (x.dim() - 2) + (0, capacity - slots))
                               for x in (sum_k, sum_v, count))
    pending = total % chunk
    pad = (0, 0, 0, chunk - pending)
    tail = lambda x: F.pad(x.view(b, h, total, x.shape[-1])[:, :, total - pending:], pad)  # noqa: E731
    common = dict(sum_v=sum_v.view(b, h, capacity, dv), count=count.view(b, h, capacity),
                  buffer_k=tail(keys), buffer_v=tail(vals), buffer_len=pending,
                  num_absorbed=state.num_absorbed + total - pending)
    if static:
        return o, VQState(**common)
    m = rows[-1][0] + rows[-1][1] if rows else m0
    return o, OVQState(sum_k=sum_k.view(b, h, capacity, d), num_centroids=m, growth=state.growth,
                       growth_rate=state.growth_rate, **common)
