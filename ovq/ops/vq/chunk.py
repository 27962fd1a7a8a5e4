"""``vq_attention``: the static-codebook baseline (Transformer-VQ, Lingle 2023) on OVQ's read path."""

from __future__ import annotations

import torch

from ..common import check_inputs, check_state, finish_output, head_first_units, state_for_compute
from ..dictionary import StaticDictionary
from ..scan import chunk_scan
from ..state import VQState
from ..triton_chunk import kernel_scan_or_fallback, use_triton
from ..utils import check_backend, check_bool, check_int, l2norm


def prepare_codebook(codebook, q: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The codebook as unit vectors [H, S, D] in the compute dtype."""
    if not isinstance(codebook, torch.Tensor):
        raise TypeError(f"codebook must be a torch.Tensor, got {type(codebook).__name__}")
    if not codebook.is_floating_point():
        raise TypeError(f"codebook must be a floating-point tensor, got dtype {codebook.dtype}")
    h, d = q.shape[2], q.shape[3]
    if codebook.dim() != 3 or codebook.shape[0] != h or codebook.shape[2] != d or codebook.shape[1] < 1:
        raise ValueError(f"codebook must have shape [H, S, D] = [{h}, S, {d}] with S >= 1, got {tuple(codebook.shape)}")
    if codebook.device != q.device:
        raise ValueError(f"codebook is on {codebook.device}, but q is on {q.device}")
    return l2norm(codebook.to(dtype))


def initial_vq_state(q, v, initial_state, chunk_size, codebook_size, dtype) -> VQState:
    if initial_state is None:
        b, _, h, d = q.shape
        return VQState.empty(b, h, d, v.shape[-1], chunk_size=chunk_size, codebook_size=codebook_size,
                             dtype=dtype, device=q.device)
    check_state(initial_state, VQState, q, v, chunk_size, codebook_size, "codebook_size")
    return state_for_compute(initial_state, dtype)


def vq_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: float | torch.Tensor,
                 codebook: torch.Tensor, *, chunk_size: int = 64, count_prior: bool = True,
                 detach_state: bool = False, initial_state: VQState | None = None,
                 output_final_state: bool = False, backend: str = "auto") -> tuple[torch.Tensor, VQState | None]:
    """VQ attention with a fixed codebook: the read of :func:`ovq_attention`, a write that only counts.

    Each full chunk's tokens are assigned to their nearest code (``argmax k̂·ĉ``, lowest index on ties)
    and add their values and a count to it; queries read every used code with logit
    ``beta * q̂·ĉ_n + log count_n`` and value ``sum_v[n] / count_n``, plus the causal keys of their chunk.
    With the count prior this is exact softmax attention over the *quantized* past keys.

    Args:
        codebook: ``[H, S, D]`` code vectors (normalized inside; frozen here, learned by the layer).
        The rest as :func:`ovq_attention` (the same kernels serve both, so the online update's cost is
        the difference between the two).
    Returns: ``(o [B, T, H, Dv], final VQState or None)``.
    """
    dtype, beta_ = check_inputs(q, k, v, beta)
    check_int("chunk_size", chunk_size)
    for name, flag in (("count_prior", count_prior), ("detach_state", detach_state),
                       ("output_final_state", output_final_state)):
        check_bool(name, flag)
    check_backend(backend)
    codes = prepare_codebook(codebook, q, dtype)
    state = initial_vq_state(q, v, initial_state, chunk_size, codes.shape[1], dtype)
    if backend == "triton" or (backend == "auto" and use_triton(q)):
        result = kernel_scan_or_fallback(backend, q, k, v, beta_, state, count_prior=count_prior,
                                         detach_state=detach_state, output_final_state=output_final_state,
                                         codebook=codes)
        if result is not None:  # None: the kernels do not fit this configuration on the GPU
            return result
    qhat, khat, vv = head_first_units(q, k, v, dtype)
    p = state.buffer_len
    o, final_state = chunk_scan(qhat, khat, vv, beta_, StaticDictionary.from_state(state, codes, detach_state),
                                state.buffer_k[:, :, :p], state.buffer_v[:, :, :p], state.num_absorbed,
                                chunk_size, count_prior, output_final_state)
    return finish_output(o, q), final_state
