"""``ovq_step``: OVQ decoding, token by token from a state (the recurrent form of ``ovq_attention``)."""

from __future__ import annotations

import torch

from ..common import check_qkv_beta, check_step_state_dtype, use_decode_kernel
from ..dictionary import OnlineDictionary
from ..scan import step_scan
from ..state import OVQState
from .chunk import check_ovq_config, initial_ovq_state


@torch.no_grad()
def ovq_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: float | torch.Tensor,
             state: OVQState | None = None, *, chunk_size: int = 64, max_centroids: int = 1024,
             growth: str = "saturating", growth_rate: float = 1.0, count_prior: bool = True,
             backend: str = "auto") -> tuple[torch.Tensor, OVQState]:
    """Consume new tokens one at a time from ``state`` (decoding). Inference only: no gradients.

    Each token is appended to the state's buffer, reads the dictionary and the buffer, and when the buffer
    holds ``chunk_size`` tokens it is written into the dictionary. The result equals ``ovq_attention`` on
    the whole sequence, position by position. ``state`` is updated **in place** (its tensors are
    preallocated, so memory stays flat) and returned; ``None`` starts an empty state. The configuration
    arguments must match the state's.

    Args: as :func:`ovq_attention`; q, k: ``[B, T, H, D]``, v: ``[B, T, H, Dv]`` with T >= 1 (usually 1).
        ``backend="triton"`` reads through the Triton decode kernel (``ovq.ops.decode``, float32 states);
        ``"auto"`` uses that kernel for CUDA tensors and PyTorch elsewhere.
    Returns: ``(o [B, T, H, Dv], state)``.
    """
    dtype, beta = check_qkv_beta(q, k, v, beta)
    check_ovq_config(chunk_size, max_centroids, growth, growth_rate, count_prior)
    check_step_state_dtype(state, q.dtype, dtype)
    state = initial_ovq_state(q, v, state, chunk_size, max_centroids, growth, growth_rate, dtype,
                              writable=True)
    return step_scan(q, k, v, beta, OnlineDictionary.from_state(state, False), state, count_prior,
                     kernel=use_decode_kernel(backend, q, dtype))
