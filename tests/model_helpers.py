"""Tiny models for the tests of ovq.models (float64, so two paths can be compared to ~1e-12)."""

import pytest
import torch
from fla_torch import patch_fla_for_cpu

from ovq.models import OVQForCausalLM, OVQLMConfig
from ovq.models.configuration_ovq import FLA_MIXERS

TINY = dict(vocab_size=64, hidden_size=32, num_heads=2, window_size=6, max_centroids=8, chunk_size=8,
            codebook_size=8, beta_init=4.0, mamba2_state_size=8, mamba2_chunk_size=16, initializer_range=0.1)

#: One case per mixer. fla's layers need Triton, which CPU lacks: their Triton functions are swapped for
#: PyTorch stand-ins (tests/fla_torch.py), as the ids say.
MIXER_CASES = [
    pytest.param("swa", id="swa"),
    pytest.param("attn", id="attn"),
    pytest.param("ovq", id="ovq"),
    pytest.param("vq", id="vq"),
    pytest.param("mamba2", id="mamba2-fla-with-torch-fallbacks"),
    pytest.param("gdn", id="gdn-fla-with-torch-fallbacks"),
]
ALL_MIXERS = ["swa", "ovq", "attn", "vq", "mamba2", "gdn"]


def tolerance(mixers) -> float:
    """Max abs error allowed between two ways of computing the same logits (float64 models).

    fla's Mamba2 computes its scan in float32 whatever the input dtype, hence a looser bound with it.
    """
    return 1e-6 if "mamba2" in mixers else 1e-10


def build_tiny_model(monkeypatch, mixers, dtype=torch.float64, seed=0, **overrides):
    """A tiny OVQForCausalLM in eval mode (fla's Triton functions swapped for PyTorch when it has fla mixers)."""
    if any(kind in FLA_MIXERS for kind in mixers):
        patch_fla_for_cpu(monkeypatch)
    torch.manual_seed(seed)
    config = OVQLMConfig(**(TINY | dict(mixers=list(mixers)) | overrides))
    return OVQForCausalLM(config).to(dtype).eval()
