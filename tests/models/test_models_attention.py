import pytest
import torch
import torch.nn.functional as F

from ovq.models.attention import banded_window_attention


@pytest.mark.parametrize("t,window", [(1, 4), (4, 4), (5, 4), (13, 4), (64, 8), (67, 16), (300, 64)])
def test_banded_window_attention_equals_dense_band_mask(t, window):
    """The O(T·W) sliding window equals SDPA with the dense band mask, outputs and gradients."""
    torch.manual_seed(t)
    q, k, v = (torch.randn(2, 3, t, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    i = torch.arange(t)
    band = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=band)
    out = banded_window_attention(q, k, v, window)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_banded_window_attention_ignores_keys_outside_the_window():
    """Changing a key W or more positions back changes nothing; one inside the window does."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 8) for _ in range(3))
    out = banded_window_attention(q, k, v, 8)
    k2 = k.clone()
    k2[:, :, 10] += 5.0
    out2 = banded_window_attention(q, k2, v, 8)
    torch.testing.assert_close(out2[:, :, 18:], out[:, :, 18:])
    torch.testing.assert_close(out2[:, :, :10], out[:, :, :10])
    assert not torch.allclose(out2[:, :, 17], out[:, :, 17])
