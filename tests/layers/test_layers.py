"""OVQAttention and VQAttention layers: shapes, decoding from a state, the N knob, gradients, bad config."""

import pytest
import torch

from ovq.layers import OVQAttention, VQAttention
from ovq.ops import OVQState


def _layer(cls, **kw):
    torch.manual_seed(0)
    defaults = dict(chunk_size=8, output_gate=True, beta_init=6.0)
    if cls is OVQAttention:
        defaults["max_centroids"] = 16
    else:
        defaults["codebook_size"] = 16
    return cls(32, 4, **(defaults | kw)).double()


@pytest.mark.parametrize("cls", [OVQAttention, VQAttention])
def test_forward_backward(cls):
    layer = _layer(cls)
    x = torch.randn(2, 37, 32, dtype=torch.float64, requires_grad=True)
    y, state = layer(x)
    assert y.shape == x.shape and state is None
    loss = y.square().mean() + (layer.commit_loss if cls is VQAttention else 0)
    loss.backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("cls", [OVQAttention, VQAttention])
def test_prefill_then_decode_equals_full_forward(cls):
    layer = _layer(cls).eval()
    x = torch.randn(2, 45, 32, dtype=torch.float64)
    with torch.no_grad():
        full, _ = layer(x)
        y, state = layer(x[:, :19], use_cache=True)
        outs = [y]
        for t in range(19, 45):
            y, state = layer(x[:, t:t + 1], state=state, use_cache=True)
            outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-12, rtol=0)
    assert state.num_tokens == 45


def test_bf16_forward_keeps_float32_state():
    layer = _layer(OVQAttention).to(torch.bfloat16)
    y, state = layer(torch.randn(1, 20, 32, dtype=torch.bfloat16), use_cache=True)
    assert y.dtype == torch.bfloat16 and state.sum_k.dtype == torch.float32


def test_max_centroids_is_a_deployment_knob():
    layer = _layer(OVQAttention).eval()
    x = torch.randn(1, 200, 32, dtype=torch.float64)
    with torch.no_grad():
        y16, s16 = layer(x, use_cache=True)
        layer.max_centroids = 64
        y64, s64 = layer(x, use_cache=True)
    assert s16.max_centroids == 16 and s64.max_centroids == 64
    assert s64.nbytes > s16.nbytes and s64.num_centroids > s16.num_centroids
    assert not torch.allclose(y16, y64)
    with pytest.raises(ValueError, match="max_centroids = 16"):
        layer(x[:, :1], state=s16)
    with pytest.raises(ValueError, match="max_centroids must be >= 1"):
        layer.max_centroids = 0
    assert layer.init_state(3).nbytes == OVQState.max_nbytes(4, 8, max_centroids=64, chunk_size=8, batch_size=3)


def test_vq_codebook_learns_in_training_and_freezes_in_eval():
    layer = _layer(VQAttention).float()
    x = torch.randn(2, 64, 32)
    layer.train()
    layer(x)  # first training call seeds the codes from the batch's keys
    seeded = layer.codebook_sum.clone()
    layer(x)
    assert not torch.equal(layer.codebook_sum, seeded)
    assert layer.commit_loss.dim() == 0 and layer.commit_loss.requires_grad
    layer.eval()
    before = layer.codebook_sum.clone()
    layer(x)
    assert torch.equal(layer.codebook_sum, before) and layer.commit_loss is None


def test_vq_commit_loss_falls_with_ema_steps():
    """EMA k-means pulls the codes onto clustered keys: the commitment loss falls far below random codes'."""
    layer = _layer(VQAttention, codebook_size=8, ema_decay=0.5).float().train()
    layer.codebook_initialized.fill_(True)  # start from the random codes, not from seeds taken from data
    centers = torch.randn(4, 32) * 3
    x = centers[torch.randint(4, (4, 64))] + 0.05 * torch.randn(4, 64, 32)
    losses = []
    for _ in range(20):
        layer(x)
        losses.append(layer.commit_loss.item())
    assert losses[-1] < 0.1 * losses[0]


@pytest.mark.parametrize("kwargs,match", [
    (dict(hidden_size=30, num_heads=4), "num_heads (4) must divide hidden_size (30)"),
    (dict(hidden_size=32, num_heads=0), "num_heads must be >= 1"),
    (dict(hidden_size=32, num_heads=4, chunk_size=0), "chunk_size must be >= 1"),
    (dict(hidden_size=32, num_heads=4, max_centroids=0), "max_centroids must be >= 1"),
    (dict(hidden_size=32, num_heads=4, growth="cubic"), "growth must be one of"),
    (dict(hidden_size=32, num_heads=4, beta_init=-1.0), "beta_init must be a finite number > 0"),
])
def test_bad_config(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match.replace("(", r"\(").replace(")", r"\)")):
        OVQAttention(**kwargs)


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r"x must have shape \[B, T, 32\]"):
        _layer(OVQAttention)(torch.randn(2, 5, 31, dtype=torch.float64))
