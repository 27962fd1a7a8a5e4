"""Argument handling shared by every public op: check, move to head-first compute layout, and back."""

from __future__ import annotations

import torch

from .state import DictionaryState
from .utils import beta_view, check_backend, check_beta, check_qkv, l2norm, state_dtype


def check_state(state, state_type: type, q: torch.Tensor, v: torch.Tensor, chunk_size: int, capacity: int,
                capacity_name: str, **config) -> None:
    """``state`` must come from an op with this configuration, batch, heads and head dims."""
    if not isinstance(state, state_type):
        raise TypeError(f"initial_state must be an {state_type.__name__} or None, got {type(state).__name__}")
    b, _, h, d = q.shape
    expected = {"(B, H, D, Dv)": ((b, h, d, v.shape[-1]), state.shape), "chunk_size": (chunk_size, state.chunk_size),
                capacity_name: (capacity, state.capacity)}
    expected.update({name: (value, getattr(state, name)) for name, value in config.items()})
    for name, (want, got) in expected.items():
        if want != got:
            raise ValueError(f"initial_state was made with {name} = {got}, but this call has {name} = {want}")
    if not 0 <= state.buffer_len < state.chunk_size:
        raise ValueError(f"initial_state.buffer_len must be in [0, chunk_size), got {state.buffer_len}")
    if state.num_absorbed % state.chunk_size:
        raise ValueError(f"initial_state.num_absorbed must be a multiple of chunk_size, got {state.num_absorbed}")
    if state.device != q.device:
        raise ValueError(f"initial_state is on {state.device}, but q is on {q.device}")


def check_qkv_beta(q, k, v, beta) -> tuple[torch.dtype, torch.Tensor | float]:
    """Check q/k/v/beta; return the compute dtype and beta as checked (a float, or a tensor of shape [H] or [])."""
    check_qkv(q, k, v)
    return state_dtype(q.dtype), check_beta(beta, q.shape[2], q.device)


def check_inputs(q, k, v, beta) -> tuple[torch.dtype, torch.Tensor]:
    """Check q/k/v/beta; return the compute dtype and beta for [B, H, ·, ·]."""
    dtype, beta = check_qkv_beta(q, k, v, beta)
    return dtype, beta_view(beta, dtype)


def head_first_units(q, k, v, dtype: torch.dtype):
    """Unit q, k and v, head-first [B, H, T, ·] in the compute dtype (the PyTorch paths' layout; the kernels
    convert in one pass of their own, ``ovq.ops.layout``)."""
    qhat, khat, v = (x.transpose(1, 2).to(dtype) for x in (q, k, v))
    return l2norm(qhat), l2norm(khat), v


def check_step_state_dtype(state, input_dtype: torch.dtype, compute_dtype: torch.dtype) -> None:
    """Decoding updates the state in place, so it must already have the compute dtype (no silent copy)."""
    if state is not None and state.dtype != compute_dtype:
        raise TypeError(f"state has dtype {state.dtype}, but inputs of dtype {input_dtype} need a {compute_dtype} state")


def state_for_compute(state: DictionaryState, dtype: torch.dtype) -> DictionaryState:
    return state if state.dtype == dtype else state.to(dtype)


#: Whether ``backend="auto"`` decodes through the Triton read on CUDA. On since its check on an H200
#: (``tests/ops/test_decode.py`` compiled, and ``python -m ovq.bench.ops --decode-only``: docs/kernels.md).
DECODE_KERNEL_BY_DEFAULT = True


def use_decode_kernel(backend: str, q: torch.Tensor, compute_dtype: torch.dtype) -> bool:
    """Whether a decoding step reads through the Triton kernel (``"triton"``; float32 states only)."""
    from .triton_chunk import use_triton
    check_backend(backend)
    if backend == "torch":
        return False
    if backend == "triton":
        if compute_dtype != torch.float32:
            raise ValueError(f"the Triton decode read computes in float32; {compute_dtype} needs backend='torch'")
        return True
    return DECODE_KERNEL_BY_DEFAULT and use_triton(q) and compute_dtype == torch.float32


def finish_output(o: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B, H, T, Dv] compute dtype -> [B, T, H, Dv] in the input dtype."""
    return o.transpose(1, 2).to(like.dtype)
