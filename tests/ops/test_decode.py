"""The Triton decode read (``ovq.ops.decode``) vs the PyTorch read, through ``ovq_step`` and ``vq_step``.

Token by token across several chunk writes (the dictionary grows, fills and saturates), odd head sizes,
both count priors, empty VQ codes, and against the chunked op. On CPU in Triton's interpreter.
"""

import pytest
import torch

from ovq.ops import ovq_attention, ovq_step, vq_step

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _decode(step, q, k, v, beta, backend, **kw):
    state, outs = None, []
    for t in range(q.shape[1]):
        o, state = step(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], beta, state=state, backend=backend, **kw)
        outs.append(o)
    return torch.cat(outs, dim=1), state


def _qkv(t, h, d, dv, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, t, h, n, generator=g).to(DEVICE) for n in (d, d, dv)]


@pytest.mark.parametrize("count_prior", [True, False])
@pytest.mark.parametrize("t,chunk,n,d,dv", [(23, 4, 6, 12, 5), (9, 8, 64, 16, 16)])
def test_ovq_decode_kernel_matches_torch_read(count_prior, t, chunk, n, d, dv):
    q, k, v = _qkv(t, 3, d, dv)
    beta = torch.tensor([1.0, 4.0, 9.0], device=DEVICE)
    kw = dict(chunk_size=chunk, max_centroids=n, count_prior=count_prior)
    ref, ref_state = _decode(ovq_step, q, k, v, beta, "torch", **kw)
    out, state = _decode(ovq_step, q, k, v, beta, "triton", **kw)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state.sum_k, ref_state.sum_k)  # the write is shared; the read changes nothing
    assert state.num_centroids == ref_state.num_centroids > 0
    chunked, _ = ovq_attention(q, k, v, beta, **kw, backend="torch")
    torch.testing.assert_close(out, chunked, rtol=1e-5, atol=1e-5)


def test_ovq_decode_kernel_takes_a_float_beta_and_an_empty_dictionary():
    q, k, v = _qkv(3, 2, 8, 8, seed=1)  # 3 tokens, chunk 4: only the buffer is read
    ref, _ = _decode(ovq_step, q, k, v, 2.5, "torch", chunk_size=4, max_centroids=8)
    out, _ = _decode(ovq_step, q, k, v, 2.5, "triton", chunk_size=4, max_centroids=8)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("count_prior", [True, False])
def test_vq_decode_kernel_matches_torch_read(count_prior):
    q, k, v = _qkv(13, 2, 8, 6, seed=2)
    g = torch.Generator().manual_seed(3)
    codebook = torch.nn.functional.normalize(torch.randn(2, 40, 8, generator=g), dim=-1).to(DEVICE)  # most stay empty
    kw = dict(chunk_size=4, count_prior=count_prior)
    ref, ref_state = _decode(vq_step, q, k, v, 3.0, "torch", codebook=codebook, **kw)
    out, state = _decode(vq_step, q, k, v, 3.0, "triton", codebook=codebook, **kw)
    assert (ref_state.count == 0).any()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_decode_backend_is_checked():
    q, k, v = _qkv(1, 2, 8, 8)
    with pytest.raises(ValueError, match="backend must be one of"):
        ovq_step(q, k, v, 1.0, backend="cuda")
    with pytest.raises(ValueError, match="float32"):
        ovq_step(q.double(), k.double(), v.double(), 1.0, backend="triton")


def test_decode_backend_dispatch():
    from ovq.ops.common import DECODE_KERNEL_BY_DEFAULT, use_decode_kernel

    q = torch.zeros(1, 1, 2, 4)
    assert use_decode_kernel("torch", q, torch.float32) is False
    assert use_decode_kernel("triton", q, torch.float32) is True  # forced: CPU runs it in the interpreter
    assert use_decode_kernel("auto", q, torch.float32) is False   # auto: CUDA tensors only
    if torch.cuda.is_available():
        assert use_decode_kernel("auto", q.cuda(), torch.float32) is DECODE_KERNEL_BY_DEFAULT
    with pytest.raises(ValueError, match="float32"):
        use_decode_kernel("triton", q.double(), torch.float64)
    with pytest.raises(ValueError):
        use_decode_kernel("cuda", q, torch.float32)


def _filled_state(b, h, d, dv, m, n, chunk, seed):
    """An OVQ state holding m random centroids (several blocks of the kernel's 64, so several splits)."""
    from ovq.ops import OVQState

    g = torch.Generator().manual_seed(seed)
    state = OVQState.empty(b, h, d, dv, chunk_size=chunk, max_centroids=n, device=DEVICE)
    state.sum_k[:, :, :m] = torch.randn(b, h, m, d, generator=g).to(DEVICE)
    state.count[:, :, :m] = torch.randint(1, 9, (b, h, m), generator=g).float().to(DEVICE)
    state.sum_v[:, :, :m] = torch.randn(b, h, m, dv, generator=g).to(DEVICE)
    state.num_centroids, state.num_absorbed = m, 40 * chunk
    return state


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_decode_step_over_several_splits_matches_torch_read(dtype, monkeypatch):
    """Many centroids, so the centroid blocks are split over programs and the last to arrive merges them (its
    counter reused step after step); non-contiguous half-precision inputs; the buffer and output dtype."""
    from ovq.ops import decode

    if DEVICE == "cpu":  # the interpreter's split rule gives at most 2; ask for more
        monkeypatch.setattr(decode, "_splits", lambda bh, blocks, device: min(blocks, 3))
    b, h, d, dv, m, chunk = 2, 3, 12, 10, 150, 8
    base = _filled_state(b, h, d, dv, m, 256, chunk, seed=4)
    g = torch.Generator().manual_seed(5)
    t = 11  # crosses a chunk write (the buffer fills after 8)
    q, k = (torch.randn(b, h, t, d, generator=g).to(DEVICE, dtype).transpose(1, 2) for _ in range(2))  # strided
    v = torch.randn(b, t, h, dv, generator=g).to(DEVICE, dtype)
    beta = torch.tensor([2.0, 5.0, 9.0], device=DEVICE)
    kw = dict(chunk_size=chunk, max_centroids=256)
    ref, ref_state = ovq_step(q, k, v, beta, base.clone(), backend="torch", **kw)
    out, state = ovq_step(q, k, v, beta, base.clone(), backend="triton", **kw)
    assert out.dtype == dtype and out.shape == (b, t, h, dv)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-3, atol=1e-3)
    torch.testing.assert_close(out, ref, **tol)
    assert state.buffer_len == ref_state.buffer_len == 3 and state.num_centroids == ref_state.num_centroids
    for name in ("sum_k", "sum_v", "count", "buffer_k", "buffer_v"):  # the kernel's buffered rows feed the write
        torch.testing.assert_close(getattr(state, name), getattr(ref_state, name), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("beta", [3.0, "0-dim"])
def test_decode_step_takes_a_float_or_0_dim_beta(beta):
    beta = torch.tensor(3.0, device=DEVICE) if beta == "0-dim" else beta
    base = _filled_state(1, 2, 8, 8, 70, 128, 4, seed=6)
    q, k, v = (x[:1] for x in _qkv(2, 2, 8, 8, seed=7))
    ref, _ = ovq_step(q, k, v, beta, base.clone(), chunk_size=4, max_centroids=128, backend="torch")
    out, _ = ovq_step(q, k, v, beta, base.clone(), chunk_size=4, max_centroids=128, backend="triton")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_decode_step_reads_inputs_strided_in_their_last_dim():
    base = _filled_state(1, 2, 8, 6, 70, 128, 4, seed=8)
    g = torch.Generator().manual_seed(9)
    q, k = (torch.randn(1, 3, 2, 16, generator=g).to(DEVICE)[..., ::2] for _ in range(2))  # head dim stride 2
    v = torch.randn(1, 3, 2, 12, generator=g).to(DEVICE)[..., ::2]
    assert q.stride(-1) == 2 and v.stride(-1) == 2
    ref, _ = ovq_step(q, k, v, 4.0, base.clone(), chunk_size=4, max_centroids=128, backend="torch")
    out, _ = ovq_step(q, k, v, 4.0, base.clone(), chunk_size=4, max_centroids=128, backend="triton")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
