"""``vq_step``: decoding for the static-codebook baseline, token by token from a :class:`VQState`."""

from __future__ import annotations

import torch

from ..common import check_qkv_beta, check_step_state_dtype, use_decode_kernel
from ..dictionary import StaticDictionary
from ..scan import step_scan
from ..state import VQState
from ..utils import check_bool, check_int
from .chunk import initial_vq_state, prepare_codebook


@torch.no_grad()
def vq_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: float | torch.Tensor,
            codebook: torch.Tensor, state: VQState | None = None, *, chunk_size: int = 64,
            count_prior: bool = True, backend: str = "auto") -> tuple[torch.Tensor, VQState]:
    """The recurrent form of :func:`vq_attention`; updates ``state`` in place (see :func:`ovq_step`, also for
    ``backend``)."""
    dtype, beta = check_qkv_beta(q, k, v, beta)
    check_int("chunk_size", chunk_size)
    check_bool("count_prior", count_prior)
    check_step_state_dtype(state, q.dtype, dtype)
    codes = prepare_codebook(codebook, q, dtype)
    state = initial_vq_state(q, v, state, chunk_size, codes.shape[1], dtype)
    return step_scan(q, k, v, beta, StaticDictionary.from_state(state, codes, False), state, count_prior,
                     kernel=use_decode_kernel(backend, q, dtype))
