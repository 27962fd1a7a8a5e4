"""The static-codebook (Transformer-VQ) op: its reference, its identity, decoding and carrying state."""

import pytest
import torch
from conftest import random_qkv
from helpers import assert_states_equal

from ovq.ops import naive_vq_attention, vq_attention, vq_step


def _codebook(H, S, D, seed=0):
    return torch.randn(H, S, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("T", [1, 63, 65, 130])
@pytest.mark.parametrize("count_prior", [True, False])
def test_matches_naive(T, count_prior):
    q, k, v = random_qkv(2, T, 2, 4, 3, seed=T)
    codebook = _codebook(2, 12, 4)
    beta = torch.tensor([2.0, 8.0], dtype=torch.float64)
    o, state = vq_attention(q, k, v, beta, codebook, chunk_size=8, count_prior=count_prior, output_final_state=True)
    ref, final = naive_vq_attention(q, k, v, beta, codebook, chunk_size=8, count_prior=count_prior)
    torch.testing.assert_close(o, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(state.sum_v, final["sum_v"], atol=1e-12, rtol=0)
    torch.testing.assert_close(state.count, final["count"], atol=0, rtol=0)


def test_count_prior_read_is_attention_over_quantized_past_keys():
    """With the count prior, reading code n weighs exp(beta q̂·ĉ_n) once per merged token: exact attention
    in which every key of an earlier chunk is replaced by its code, and in-chunk keys are exact."""
    B, T, H, D, L = 1, 40, 2, 4, 8
    q, k, v = random_qkv(B, T, H, D, seed=3)
    codebook = _codebook(H, 6, D, seed=4)
    o, _ = vq_attention(q, k, v, 3.0, codebook, chunk_size=L)
    unit = torch.nn.functional.normalize
    qh, kh, ch = unit(q, dim=-1), unit(k, dim=-1), unit(codebook, dim=-1)
    code_of = torch.einsum("bthd,hsd->bths", kh, ch).argmax(-1)  # [B, T, H]
    kq = torch.stack([ch[h][code_of[:, :, h]] for h in range(H)], dim=2)  # quantized keys
    pos = torch.arange(T)
    same_chunk = (pos[:, None] // L) == (pos[None, :] // L)
    keys = torch.where(same_chunk[None, :, :, None, None], kh[:, None], kq[:, None])  # [B, Tq, Tk, H, D]
    logits = 3.0 * torch.einsum("bthd,btshd->bhts", qh, keys)
    logits = logits.masked_fill(pos[None, :] > pos[:, None], float("-inf"))
    ref = torch.einsum("bhts,bshd->bthd", torch.softmax(logits, -1), v)
    torch.testing.assert_close(o, ref, atol=1e-12, rtol=0)


def test_decoding_and_carrying_match_one_pass():
    T = 75
    q, k, v = random_qkv(2, T, 2, 4, 5, seed=9)
    codebook = _codebook(2, 10, 4, seed=1)
    o, final = vq_attention(q, k, v, 4.0, codebook, chunk_size=8, output_final_state=True)
    state, outs = None, []
    for t in range(T):
        o_t, state = vq_step(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], 4.0, codebook, state, chunk_size=8)
        outs.append(o_t)
    torch.testing.assert_close(torch.cat(outs, 1), o, atol=1e-12, rtol=0)
    assert_states_equal(state, final)
    a, mid = vq_attention(q[:, :29], k[:, :29], v[:, :29], 4.0, codebook, chunk_size=8, output_final_state=True)
    b, end = vq_attention(q[:, 29:], k[:, 29:], v[:, 29:], 4.0, codebook, chunk_size=8, initial_state=mid,
                          output_final_state=True)
    torch.testing.assert_close(torch.cat([a, b], 1), o, atol=1e-12, rtol=0)
    assert_states_equal(end, final)


def test_gradients_match_naive():
    q, k, v = random_qkv(1, 30, 2, 4, 3, seed=2, requires_grad=True)
    codebook = _codebook(2, 5, 4)
    o, _ = vq_attention(q, k, v, 3.0, codebook, chunk_size=8)
    ref, _ = naive_vq_attention(q, k, v, 3.0, codebook, chunk_size=8)
    for g, r in zip(torch.autograd.grad(o.sum(), (q, k, v)), torch.autograd.grad(ref.sum(), (q, k, v))):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=0)
