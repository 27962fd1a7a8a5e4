"""Drivers that run a dictionary over a sequence: chunk by chunk (training/prefill) or token by token
(decoding). Both OVQ and the VQ baseline go through these, so they differ only in their writes.

Inputs are head-first and already in the compute dtype: unit queries/keys [B, H, T, D], values
[B, H, T, Dv]. Chunk boundaries are absolute: a state's buffer always starts a chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import finish_output, head_first_units
from .dictionary import dictionary_attention
from .utils import beta_view


def chunk_scan(qhat, khat, v, beta, dictionary, buffer_k, buffer_v, num_absorbed: int, chunk_size: int,
               count_prior: bool, output_final_state: bool):
    """Read-then-write over the sequence, one chunk at a time, vectorized within each chunk.

    buffer_k/buffer_v: [B, H, p, ·] tokens already pending in the current chunk (p < L; p may be 0).
    Returns (o [B, H, T, Dv], final state or None).
    """
    p, length = buffer_k.shape[-2], qhat.shape[-2]
    keys, vals = torch.cat([buffer_k, khat], dim=-2), torch.cat([buffer_v, v], dim=-2)
    total = p + length
    outputs = []
    for start in range(0, total, chunk_size):
        end = min(start + chunk_size, total)
        q_start = max(start, p)  # buffered tokens were answered earlier; only new ones query
        if q_start < end:
            terms = dictionary.read_terms(count_prior)
            outputs.append(dictionary_attention(qhat[..., q_start - p:end - p, :], beta, *terms,
                                                keys[..., start:end, :], vals[..., start:end, :],
                                                query_offset=q_start - start))
        if end - start == chunk_size:
            dictionary = dictionary.write(keys[..., start:end, :], vals[..., start:end, :],
                                          num_absorbed + end)
    o = torch.cat(outputs, dim=-2) if outputs else v.new_zeros(v.shape)
    if not output_final_state:
        return o, None
    pending = total % chunk_size
    pad = (0, 0, 0, chunk_size - pending)
    state = dictionary.to_state(F.pad(keys[..., total - pending:, :], pad), F.pad(vals[..., total - pending:, :], pad),
                                buffer_len=pending, num_absorbed=num_absorbed + total - pending)
    return o, state


class TorchStepRead:
    """The decoding step's read in PyTorch, for :func:`step_scan`: the token joins the buffer, then
    :func:`dictionary_attention` reads the dictionary and the buffer.

    q, k, v: the caller's ``[B, T, H, ·]``; beta: a checked float or ``[H]`` / 0-dim tensor; ``dtype`` the state's.
    """

    def __init__(self, q, k, v, beta, state, count_prior: bool, dtype: torch.dtype):
        self.like, self.state, self.count_prior = q, state, count_prior
        self.qhat, self.khat, self.v = head_first_units(q, k, v, dtype)
        self.beta = beta_view(beta, dtype)
        self.outputs = []

    def __call__(self, i: int, p: int, dictionary) -> None:
        st = self.state
        st.buffer_k[:, :, p].copy_(self.khat[:, :, i])
        st.buffer_v[:, :, p].copy_(self.v[:, :, i])
        terms = dictionary.read_terms(self.count_prior)
        self.outputs.append(dictionary_attention(self.qhat[:, :, i:i + 1], self.beta, *terms, st.buffer_k[:, :, :p + 1],
                                                 st.buffer_v[:, :, :p + 1], query_offset=p))

    def output(self) -> torch.Tensor:
        o = torch.cat(self.outputs, dim=-2) if self.outputs else self.v.new_zeros(self.v.shape)
        return finish_output(o, self.like)


def step_scan(q, k, v, beta, dictionary, state, count_prior: bool, kernel: bool = False):
    """Token by token: buffer the token, read dictionary + buffer, write when the buffer holds L tokens.

    q, k: the caller's ``[B, T, H, D]``, v: ``[B, T, H, Dv]``, beta checked (``ovq.ops.utils.check_beta``).
    Updates ``state`` (its preallocated tensors) in place and returns (o [B, T, H, Dv] in q's dtype, state).
    ``kernel`` reads with the Triton decoding step (``ovq.ops.decode``, one launch a token) instead of PyTorch.
    """
    if kernel:
        from .decode import TritonStepRead  # imports Triton: only when asked for
        read = TritonStepRead(q, k, v, beta, state, count_prior)
    else:
        read = TorchStepRead(q, k, v, beta, state, count_prior, state.dtype)
    chunk_size = state.chunk_size
    for i in range(q.shape[1]):
        p = state.buffer_len
        read(i, p, dictionary)
        state.buffer_len = p + 1
        if p + 1 == chunk_size:
            dictionary = dictionary.write(state.buffer_k, state.buffer_v, state.num_absorbed + chunk_size)
            dictionary.store(state)
            state.buffer_k.zero_()  # rows past buffer_len stay zero, as in chunk_scan's states
            state.buffer_v.zero_()
            state.buffer_len = 0
            state.num_absorbed += chunk_size
    return read.output(), state
