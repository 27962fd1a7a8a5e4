"""The OVQ op against its loop reference and the spec's identities (CPU, float64 unless stated)."""

import pytest
import torch
from conftest import random_qkv
from helpers import assert_states_equal, causal_attention

from ovq.ops import OVQState, naive_ovq_attention, ovq_attention, ovq_step

CONFIGS = [  # (chunk_size, max_centroids, growth, growth_rate)
    (16, 64, "saturating", 1.0),
    (8, 20, "saturating", 1.0),
    (7, 1000, "saturating", 1.0),
    (16, 48, "linear", 0.25),
    (5, 9, "linear", 0.5),
]


def _kwargs(cfg):
    L, N, growth, r = cfg
    return dict(chunk_size=L, max_centroids=N, growth=growth, growth_rate=r)


def _assert_final_matches_naive(state, final):
    m = state.num_centroids
    assert m == final["num_centroids"]
    assert state.num_absorbed == final["num_absorbed"]
    torch.testing.assert_close(state.sum_k[:, :, :m], final["sum_k"], atol=1e-12, rtol=0)
    torch.testing.assert_close(state.sum_v[:, :, :m], final["sum_v"], atol=1e-12, rtol=0)
    torch.testing.assert_close(state.count[:, :, :m], final["count"], atol=0, rtol=0)
    assert torch.all(state.sum_k[:, :, m:] == 0) and torch.all(state.count[:, :, m:] == 0)


@pytest.mark.parametrize("T", [1, 63, 65, 300])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"L{c[0]}-N{c[1]}-{c[2]}")
def test_matches_naive(T, cfg):
    q, k, v = random_qkv(2, T, 2, 6, 5, seed=T)
    beta = torch.tensor([3.0, 9.0], dtype=torch.float64)
    o, state = ovq_attention(q, k, v, beta, **_kwargs(cfg), output_final_state=True)
    ref, final = naive_ovq_attention(q, k, v, beta, **_kwargs(cfg))
    torch.testing.assert_close(o, ref, atol=1e-12, rtol=0)
    _assert_final_matches_naive(state, final)


@pytest.mark.parametrize("count_prior", [True, False])
def test_count_prior_option_matches_naive(count_prior):
    q, k, v = random_qkv(1, 130, 3, 4, seed=5)
    kw = dict(chunk_size=8, max_centroids=12, count_prior=count_prior)
    o, _ = ovq_attention(q, k, v, 5.0, **kw)
    torch.testing.assert_close(o, naive_ovq_attention(q, k, v, 5.0, **kw)[0], atol=1e-12, rtol=0)


def test_dictionary_plateaus_at_the_cap():
    """Saturating growth approaches N from below; linear growth reaches N and stops."""
    q, k, v = random_qkv(1, 640, 1, 4, seed=1)
    _, sat = ovq_attention(q, k, v, 4.0, chunk_size=16, max_centroids=32, output_final_state=True)
    _, lin = ovq_attention(q, k, v, 4.0, chunk_size=16, max_centroids=32, growth="linear", growth_rate=0.5,
                           output_final_state=True)
    assert sat.num_centroids == (32 * 640) // (32 + 640) == 30
    assert lin.num_centroids == 32
    assert sat.count.sum() == lin.count.sum() == 640


def test_no_centroid_drops_chunks():
    """N = 1 with saturating growth never opens a centroid: reads are local only, the chunks are dropped."""
    q, k, v = random_qkv(1, 40, 2, 4, seed=2)
    o, state = ovq_attention(q, k, v, 2.0, chunk_size=8, max_centroids=1, output_final_state=True)
    assert state.num_centroids == 0 and state.num_absorbed == 40
    torch.testing.assert_close(o, naive_ovq_attention(q, k, v, 2.0, chunk_size=8, max_centroids=1)[0])
    blockwise = torch.cat([causal_attention(q[:, s:s + 8], k[:, s:s + 8], v[:, s:s + 8], 2.0)
                           for s in range(0, 40, 8)], dim=1)
    torch.testing.assert_close(o, blockwise, atol=1e-12, rtol=0)


@pytest.mark.parametrize("T,L", [(1, 4), (37, 8), (96, 16), (129, 64)])
def test_linear_growth_one_centroid_per_token_is_causal_attention(T, L):
    q, k, v = random_qkv(2, T, 3, 8, 4, seed=T)
    beta = torch.tensor([1.0, 4.0, 16.0], dtype=torch.float64)
    o, _ = ovq_attention(q, k, v, beta, chunk_size=L, max_centroids=T, growth="linear", growth_rate=1.0)
    torch.testing.assert_close(o, causal_attention(q, k, v, beta), atol=1e-12, rtol=0)


def test_causality():
    T, t = 100, 41
    q, k, v = random_qkv(1, T, 2, 6, seed=3)
    kw = dict(chunk_size=8, max_centroids=16)
    o, _ = ovq_attention(q, k, v, 6.0, **kw)
    q2, k2, v2 = (x.clone() for x in (q, k, v))
    for x in (q2, k2, v2):
        x[:, t:] = torch.randn_like(x[:, t:]) * 3
    o2, _ = ovq_attention(q2, k2, v2, 6.0, **kw)
    assert torch.equal(o[:, :t], o2[:, :t])
    assert not torch.allclose(o[:, t:], o2[:, t:])


@pytest.mark.parametrize("cfg", CONFIGS[:4], ids=lambda c: f"L{c[0]}-N{c[1]}-{c[2]}")
@pytest.mark.parametrize("step_len", [1, 3])
def test_decoding_matches_chunked_forward(cfg, step_len):
    T = 101
    q, k, v = random_qkv(2, T, 2, 5, 3, seed=7)
    beta = torch.tensor([2.0, 7.0], dtype=torch.float64)
    o, final = ovq_attention(q, k, v, beta, **_kwargs(cfg), output_final_state=True)
    state, outs = None, []
    for s in range(0, T, step_len):
        sl = slice(s, s + step_len)
        o_s, state = ovq_step(q[:, sl], k[:, sl], v[:, sl], beta, state, **_kwargs(cfg))
        outs.append(o_s)
    torch.testing.assert_close(torch.cat(outs, dim=1), o, atol=1e-12, rtol=0)
    assert_states_equal(state, final)


@pytest.mark.parametrize("split", [32, 64, 45, 1, 99])
def test_split_and_carry_equals_one_pass(split):
    """At a chunk boundary (32, 64) and inside a chunk (the buffer carries the partial chunk)."""
    T, kw = 130, dict(chunk_size=16, max_centroids=24)
    q, k, v = random_qkv(1, T, 2, 4, seed=split, requires_grad=True)
    o, final = ovq_attention(q, k, v, 3.0, **kw, output_final_state=True)
    gq, gk, gv = torch.autograd.grad(o.square().sum(), (q, k, v))
    a, mid = ovq_attention(q[:, :split], k[:, :split], v[:, :split], 3.0, **kw, output_final_state=True)
    b, end = ovq_attention(q[:, split:], k[:, split:], v[:, split:], 3.0, **kw, initial_state=mid,
                           output_final_state=True)
    torch.testing.assert_close(torch.cat([a, b], 1), o, atol=1e-12, rtol=0)
    assert_states_equal(end, final)
    # The carried state is differentiable: gradients flow back into the first segment too.
    grads = torch.autograd.grad(torch.cat([a, b], 1).square().sum(), (q, k, v))
    for g, g_ref in zip(grads, (gq, gk, gv)):
        torch.testing.assert_close(g, g_ref, atol=1e-10, rtol=0)


def test_state_never_grows_past_the_bound():
    B, H, D, Dv, L, N = 2, 3, 8, 4, 16, 32
    bound = OVQState.max_nbytes(H, D, Dv, max_centroids=N, chunk_size=L, batch_size=B)
    sizes = []
    state = None
    for i in range(6):  # 6 x 200 tokens, carried: far past N
        q, k, v = random_qkv(B, 200, H, D, Dv, dtype=torch.float32, seed=i)
        _, state = ovq_attention(q, k, v, 8.0, chunk_size=L, max_centroids=N, initial_state=state,
                                 output_final_state=True)
        sizes.append(state.nbytes)
        assert state.num_centroids <= N
    assert state.num_tokens == 1200
    assert sizes == [bound] * 6
    assert bound == B * H * (N * (D + Dv + 1) + L * (D + Dv)) * 4


def test_gradcheck():
    q, k, v = random_qkv(1, 21, 2, 3, 2, seed=11, requires_grad=True)
    beta = torch.tensor([2.0, 5.0], dtype=torch.float64, requires_grad=True)

    def fn(q, k, v, beta):
        return ovq_attention(q, k, v, beta, chunk_size=4, max_centroids=5)[0]

    assert torch.autograd.gradcheck(fn, (q, k, v, beta), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("detach_state", [False, True])
@pytest.mark.parametrize("cfg", [CONFIGS[1], CONFIGS[3]], ids=["saturating", "linear"])
def test_gradients_match_naive(detach_state, cfg):
    q, k, v = random_qkv(2, 70, 2, 5, 3, seed=13, requires_grad=True)
    beta = torch.tensor([3.0, 6.0], dtype=torch.float64, requires_grad=True)
    kw = dict(**_kwargs(cfg), detach_state=detach_state)
    do = torch.randn(2, 70, 2, 3, dtype=torch.float64)
    o, _ = ovq_attention(q, k, v, beta, **kw)
    grads = torch.autograd.grad((o * do).sum(), (q, k, v, beta))
    ref, _ = naive_ovq_attention(q, k, v, beta, **kw)
    ref_grads = torch.autograd.grad((ref * do).sum(), (q, k, v, beta))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=0)


def test_detach_state_stops_dictionary_gradients():
    """A key of the first chunk influences later chunks only through the dictionary."""
    q, k, v = random_qkv(1, 32, 1, 4, seed=17, requires_grad=True)
    o, _ = ovq_attention(q, k, v, 4.0, chunk_size=8, max_centroids=8, detach_state=True)
    gk, gv = torch.autograd.grad(o[:, 8:].sum(), (k, v))
    assert torch.all(gk[:, :8] == 0) and torch.all(gv[:, :8] == 0)
    o, _ = ovq_attention(q, k, v, 4.0, chunk_size=8, max_centroids=8)
    gk, gv = torch.autograd.grad(o[:, 8:].sum(), (k, v))
    assert gk[:, :8].abs().sum() > 0 and gv[:, :8].abs().sum() > 0


def test_float_beta_equals_per_head_beta():
    q, k, v = random_qkv(1, 50, 3, 4, seed=19)
    kw = dict(chunk_size=8, max_centroids=10)
    a, _ = ovq_attention(q, k, v, 5.0, **kw)
    b, _ = ovq_attention(q, k, v, torch.full((3,), 5.0, dtype=torch.float64), **kw)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_inputs_keep_a_float32_state(dtype):
    q, k, v = random_qkv(2, 90, 2, 16, seed=23, dtype=dtype)
    kw = dict(chunk_size=16, max_centroids=32)
    o, state = ovq_attention(q, k, v, 8.0, **kw, output_final_state=True)
    assert o.dtype == dtype and state.sum_k.dtype == torch.float32 and state.count.dtype == torch.float32
    ref, _ = naive_ovq_attention(q, k, v, 8.0, **kw)  # the same rounded inputs, in float64
    err = (o.double() - ref).norm() / ref.norm()
    assert err < {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]


def test_empty_sequence():
    q, k, v = random_qkv(2, 0, 2, 4)
    o, state = ovq_attention(q, k, v, 1.0, chunk_size=4, max_centroids=4, output_final_state=True)
    assert o.shape == (2, 0, 2, 4) and state.num_tokens == 0


@pytest.mark.parametrize("T", [0, 3, 9])
def test_a_returned_state_is_writable_memory(T):
    """ovq_attention starts from read-only broadcast zeros when given no state; the state it returns owns its memory
    (decoding writes it in place), whatever the sequence filled."""
    q, k, v = random_qkv(1, T + 2, 2, 4)
    _, state = ovq_attention(q[:, :T], k[:, :T], v[:, :T], 1.0, chunk_size=4, max_centroids=6, output_final_state=True)
    for x in (state.sum_k, state.sum_v, state.count, state.buffer_k, state.buffer_v):
        assert 0 not in x.stride()
    o, state = ovq_step(q[:, T:], k[:, T:], v[:, T:], 1.0, state, chunk_size=4, max_centroids=6)
    o_ref, _ = ovq_attention(q, k, v, 1.0, chunk_size=4, max_centroids=6)
    torch.testing.assert_close(o, o_ref[:, T:])
