"""Bad input to the public ops fails early with ValueError/TypeError naming the argument."""

import re

import pytest
import torch
from conftest import random_qkv

from ovq.ops import OVQState, VQState, ovq_attention, ovq_step, vq_attention


@pytest.fixture
def qkv():
    return random_qkv(2, 10, 2, 4, dtype=torch.float32)


def _raises(exc, match, fn, *args, **kwargs):
    with pytest.raises(exc, match=re.escape(match)):
        fn(*args, **kwargs)


def test_bad_tensors(qkv):
    q, k, v = qkv
    _raises(ValueError, "q must have shape [B, T, H, D]", ovq_attention, q[0], k, v, 1.0)
    _raises(ValueError, "k must have the shape of q", ovq_attention, q, k[:, :5], v, 1.0)
    _raises(ValueError, "k must have the shape of q", ovq_attention, q, k[..., :3], v, 1.0)
    _raises(ValueError, "v must match q in [B, T, H]", ovq_attention, q, k, v[:1], 1.0)
    _raises(ValueError, "v must match q in [B, T, H]", ovq_attention, q, k, v[:, :, :1], 1.0)
    _raises(TypeError, "q must be a floating-point tensor", ovq_attention, q.long(), k, v, 1.0)
    _raises(TypeError, "v must be a torch.Tensor", ovq_attention, q, k, v.numpy(), 1.0)
    _raises(TypeError, "q, k and v must share one dtype", ovq_attention, q, k.double(), v, 1.0)


def test_bad_beta(qkv):
    q, k, v = qkv
    for beta in (0.0, -1.0, float("nan"), torch.tensor([1.0, -2.0])):
        _raises(ValueError, "beta must be", ovq_attention, q, k, v, beta)
    _raises(ValueError, "beta must be a float or a tensor of shape [H]", ovq_attention, q, k, v, torch.ones(3))
    _raises(TypeError, "beta must be a float or a tensor", ovq_attention, q, k, v, "1")
    _raises(TypeError, "beta must be a floating-point tensor", ovq_attention, q, k, v, torch.ones(2, dtype=torch.long))


def test_bad_config(qkv):
    q, k, v = qkv
    _raises(ValueError, "chunk_size must be >= 1", ovq_attention, q, k, v, 1.0, chunk_size=0)
    _raises(TypeError, "chunk_size must be an int", ovq_attention, q, k, v, 1.0, chunk_size=4.0)
    _raises(ValueError, "max_centroids must be >= 1", ovq_attention, q, k, v, 1.0, max_centroids=0)
    _raises(ValueError, "growth must be one of", ovq_attention, q, k, v, 1.0, growth="exponential")
    _raises(ValueError, "growth_rate must be finite and > 0", ovq_attention, q, k, v, 1.0, growth_rate=0.0)
    _raises(TypeError, "count_prior must be a bool", ovq_attention, q, k, v, 1.0, count_prior=1)


def test_state_from_another_configuration(qkv):
    q, k, v = qkv
    _, state = ovq_attention(q, k, v, 1.0, chunk_size=4, max_centroids=8, output_final_state=True)
    _raises(ValueError, "initial_state was made with chunk_size = 4", ovq_attention, q, k, v, 1.0,
            chunk_size=8, max_centroids=8, initial_state=state)
    _raises(ValueError, "initial_state was made with max_centroids = 8", ovq_attention, q, k, v, 1.0,
            chunk_size=4, max_centroids=16, initial_state=state)
    _raises(ValueError, "initial_state was made with growth = saturating", ovq_attention, q, k, v, 1.0,
            chunk_size=4, max_centroids=8, growth="linear", initial_state=state)
    _raises(ValueError, "initial_state was made with (B, H, D, Dv)", ovq_attention, q[:1], k[:1], v[:1], 1.0,
            chunk_size=4, max_centroids=8, initial_state=state)
    _raises(TypeError, "initial_state must be an OVQState", ovq_attention, q, k, v, 1.0, initial_state={})
    vq_state = VQState.empty(2, 2, 4, chunk_size=4, codebook_size=8)
    _raises(TypeError, "initial_state must be an OVQState", ovq_attention, q, k, v, 1.0, chunk_size=4,
            max_centroids=8, initial_state=vq_state)
    _raises(TypeError, "state has dtype torch.float32", ovq_step, q.double(), k.double(), v.double(), 1.0,
            OVQState.empty(2, 2, 4, chunk_size=4, max_centroids=8))


def test_bad_codebook(qkv):
    q, k, v = qkv
    _raises(ValueError, "codebook must have shape [H, S, D] = [2, S, 4]", vq_attention, q, k, v, 1.0, torch.randn(3, 8, 4))
    _raises(TypeError, "codebook must be a floating-point tensor", vq_attention, q, k, v, 1.0, torch.ones(2, 8, 4).long())
