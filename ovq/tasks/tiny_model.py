"""A tiny two-layer SWA → OVQ language model, small enough to learn a recall task on a CPU in seconds.

It exists to prove that the task generators can be learned (``tests/tasks/test_learning.py``) and as a
smoke-test model until the models package replaces it. Layer 1 is sliding-window causal attention with
rotary positions (local: it can attach a key to the value after it); layer 2 is :class:`OVQAttention`
(global, position-free: it looks the key up in the online dictionary). Each layer is a pre-norm residual
block: mixer, then a SwiGLU MLP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import OVQAttention
from ..ops.utils import check_int


@dataclass
class TinyModelConfig:
    vocab_size: int = 64
    hidden_size: int = 64
    num_heads: int = 2
    window: int = 16
    chunk_size: int = 16
    max_centroids: int = 64
    beta_init: float = 8.0
    mlp_ratio: int = 2

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_heads", "window", "chunk_size", "max_centroids", "mlp_ratio"):
            check_int(name, getattr(self, name))
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ValueError(f"hidden_size ({self.hidden_size}) / num_heads ({self.num_heads}) must be an even "
                             f"integer (rotary positions rotate pairs of dims)")


def rotary(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding of ``x`` ``[B, H, T, D]`` (positions 0..T-1, half-split layout)."""
    t, d = x.shape[-2], x.shape[-1]
    inv_freq = base ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    angles = torch.arange(t, device=x.device, dtype=torch.float32)[:, None] * inv_freq
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class SlidingWindowAttention(nn.Module):
    """Causal multi-head attention where position t sees positions ``(t - window, t]`` (SDPA, rotary q/k)."""

    def __init__(self, hidden_size: int, num_heads: int, window: int):
        super().__init__()
        self.num_heads, self.window = num_heads, window
        self.qkv_proj = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv_proj(x).view(b, t, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        pos = torch.arange(t, device=x.device)
        offset = pos[:, None] - pos[None, :]
        allowed = (offset >= 0) & (offset < self.window)
        o = F.scaled_dot_product_attention(rotary(q), rotary(k), v, attn_mask=allowed)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, -1))


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, inner_size: int):
        super().__init__()
        self.gate_up = nn.Linear(hidden_size, 2 * inner_size, bias=False)
        self.down = nn.Linear(inner_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class TinyBlock(nn.Module):
    def __init__(self, mixer: nn.Module, hidden_size: int, mlp_ratio: int):
        super().__init__()
        self.mixer_norm, self.mixer = nn.RMSNorm(hidden_size), mixer
        self.mlp_norm, self.mlp = nn.RMSNorm(hidden_size), SwiGLU(hidden_size, mlp_ratio * hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mixer(self.mixer_norm(x))
        x = x + (y[0] if isinstance(y, tuple) else y)       # OVQAttention returns (y, state)
        return x + self.mlp(self.mlp_norm(x))


class TinySwaOvqModel(nn.Module):
    """``token ids [B, T] -> logits [B, T, vocab_size]``: embedding, SWA block, OVQ block, norm, tied head."""

    def __init__(self, config: TinyModelConfig | None = None):
        super().__init__()
        self.config = config = TinyModelConfig() if config is None else config
        h = config.hidden_size
        self.embed = nn.Embedding(config.vocab_size, h)
        self.blocks = nn.ModuleList([
            TinyBlock(SlidingWindowAttention(h, config.num_heads, config.window), h, config.mlp_ratio),
            TinyBlock(OVQAttention(h, config.num_heads, chunk_size=config.chunk_size,
                                   max_centroids=config.max_centroids, beta_init=config.beta_init), h,
                      config.mlp_ratio),
        ])
        self.norm = nn.RMSNorm(h)
        nn.init.normal_(self.embed.weight, std=h ** -0.5)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.dim() != 2 or input_ids.dtype != torch.long:
            raise ValueError(f"input_ids must be a long tensor [B, T], got {input_ids.dtype} {list(input_ids.shape)}")
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x)
        return self.norm(x) @ self.embed.weight.t()
