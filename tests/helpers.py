"""Shared test utilities (importable from tests as `helpers`)."""

import torch


def causal_attention(q, k, v, beta, scale_unit=True):
    """Exact causal softmax attention with inverse temperature ``beta`` on unit q, k (float64)."""
    q, k, v = q.double(), k.double(), v.double()
    if scale_unit:
        q = q / q.norm(dim=-1, keepdim=True)
        k = k / k.norm(dim=-1, keepdim=True)
    b = beta.double().view(1, -1, 1, 1) if isinstance(beta, torch.Tensor) else beta
    s = b * torch.einsum("bthd,bshd->bhts", q, k)
    T = q.shape[1]
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return torch.einsum("bhts,bshd->bthd", torch.softmax(s, -1), v)


def assert_states_equal(a, b, atol=1e-12):
    """Two states hold the same dictionary and buffer (tensors compared to ``atol``)."""
    assert type(a) is type(b)
    for name in ("buffer_len", "num_absorbed", "num_centroids"):
        assert getattr(a, name, None) == getattr(b, name, None), name
    for name in ("sum_k", "sum_v", "count", "buffer_k", "buffer_v"):
        x, y = getattr(a, name, None), getattr(b, name, None)
        if x is None and y is None:
            continue
        torch.testing.assert_close(x, y, atol=atol, rtol=0, msg=name)
