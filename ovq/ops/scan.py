"""Drivers that run a dictionary over a sequence: chunk by chunk (training/prefill) or token by token
(decoding). Both OVQ and the VQ baseline go through these, so they differ only in their writes.

Inputs are head-first and already in the compute dtype: unit queries/keys [B, H, T, D], values
[B, H, T, Dv]. Chunk boundaries are absolute: a state's buffer always starts a chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dictionary import dictionary_attention


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


def step_scan(qhat, khat, v, beta, dictionary, state, count_prior: bool, kernel: bool = False):
    """Token by token: buffer the token, read dictionary + buffer, write when the buffer holds L tokens.

    Updates ``state`` (its preallocated tensors) in place and returns (o [B, H, T, Dv], state). ``kernel``
    does the read with the Triton decode kernel (``ovq.ops.decode``) instead of PyTorch.
    """
    chunk_size = state.chunk_size
    if kernel:
        from .decode import triton_decode_read  # imports Triton: only when asked for
    outputs = []
    for i in range(qhat.shape[-2]):
        p = state.buffer_len
        state.buffer_k[:, :, p].copy_(khat[:, :, i])
        state.buffer_v[:, :, p].copy_(v[:, :, i])
        p += 1
        if kernel:
            keys, sums_v, count, normalize = dictionary.stored_terms()
            outputs.append(triton_decode_read(qhat[:, :, i:i + 1], beta, keys, sums_v, count, state.buffer_k,
                                              state.buffer_v, p, normalize=normalize, count_prior=count_prior))
        else:
            terms = dictionary.read_terms(count_prior)
            outputs.append(dictionary_attention(qhat[:, :, i:i + 1], beta, *terms, state.buffer_k[:, :, :p],
                                                state.buffer_v[:, :, :p], query_offset=p - 1))
        state.buffer_len = p
        if p == chunk_size:
            dictionary = dictionary.write(state.buffer_k, state.buffer_v, state.num_absorbed + chunk_size)
            dictionary.store(state)
            state.buffer_k.zero_()  # rows past buffer_len stay zero, as in chunk_scan's states
            state.buffer_v.zero_()
            state.buffer_len = 0
            state.num_absorbed += chunk_size
    o = torch.cat(outputs, dim=-2) if outputs else v.new_zeros(v.shape)
    return o, state
