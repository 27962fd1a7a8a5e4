"""The ``mamba2`` and ``gdn`` mixers: flash-linear-attention's own layers, built from an :class:`OVQLMConfig`.

fla is imported only when such a layer is built. The layers are used as fla ships them: they take the
padding mask (``attention_mask`` [B, T], 0 for left padding; Mamba2 zeroes pad tokens, GatedDeltaNet runs
the real tokens as variable-length sequences) and keep their recurrent and convolution states in the
model's :class:`~ovq.models.cache.OVQCache` through fla's cache protocol.

fla 0.6.0's kernels are Triton (GPU). On CPU its Mamba2 falls back to a pure-PyTorch path by itself;
GatedDeltaNet does not (the tests swap in PyTorch stand-ins for its Triton functions: tests/fla_torch.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .configuration_ovq import OVQLMConfig
from .padding import TokenLayout


def build_fla_mixer(kind: str, config: OVQLMConfig, layer_idx: int) -> nn.Module:
    if kind == "mamba2":
        from fla.layers import Mamba2

        return Mamba2(hidden_size=config.hidden_size, head_dim=config.mamba2_head_dim,
                      state_size=config.mamba2_state_size, expand=config.mamba2_expand, n_groups=1,
                      conv_kernel=config.conv_size, chunk_size=config.mamba2_chunk_size, norm_eps=config.norm_eps,
                      layer_idx=layer_idx)
    if kind == "gdn":
        from fla.layers import GatedDeltaNet

        return GatedDeltaNet(hidden_size=config.hidden_size, num_heads=config.gdn_num_heads,
                             head_dim=config.gdn_head_dim, expand_v=config.gdn_expand_v, use_gate=True,
                             use_short_conv=True, conv_size=config.conv_size, norm_eps=config.norm_eps,
                             layer_idx=layer_idx)
    raise ValueError(f"{kind!r} is not an fla mixer")


def fla_forward(mixer: nn.Module, x: torch.Tensor, layout: TokenLayout, cache=None) -> torch.Tensor:
    """Run an fla layer; ``cache`` is the whole :class:`~ovq.models.cache.OVQCache` (fla indexes it by layer)."""
    mask = layout.valid.to(torch.long) if layout.valid is not None else None
    y, _, _ = mixer(x, attention_mask=mask, past_key_values=cache, use_cache=cache is not None)
    return y
