"""Softmax attention mixers through ``torch.nn.functional.scaled_dot_product_attention``:
``swa`` (sliding window of W tokens, RoPE) and ``attn`` (full causal, NoPE or RoPE)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cache import _KeyValueLayer
from .padding import TokenLayout
from .rotary import apply_rotary, rotary_cos_sin


def sdpa_mask(layout: TokenLayout, past_positions: torch.Tensor | None, window: int | None) -> torch.Tensor | None:
    """Boolean SDPA mask [B or 1, 1, T, S + T] (True: attend) over cached keys then new keys.

    New key j is visible to new query i when j <= i, j is a real token and (sliding window) i - j < W;
    cached key s when it holds a token and (sliding window) is within W-1 positions of the query. Every
    query also sees itself, so pad queries get a finite (unused) output. ``None`` means plain causal.
    """
    t = layout.positions.shape[1]
    device = layout.positions.device
    if past_positions is None and not layout.has_padding and window is None:
        return None
    i = torch.arange(t, device=device)
    new = i[None, :] <= i[:, None]
    if window is not None:
        new = new & (i[:, None] - i[None, :] < window)
    new = new.unsqueeze(0)
    if layout.valid is not None:
        new = (new & layout.valid[:, None, :]) | torch.eye(t, dtype=torch.bool, device=device)
    if past_positions is None:
        return new.unsqueeze(1)
    past = (past_positions >= 0)[:, None, :]
    if window is not None:
        past = past & (layout.positions[:, :, None] - past_positions[:, None, :] < window)
    new = new.expand(past.shape[0], -1, -1)
    return torch.cat([past.expand(-1, t, -1), new], dim=-1).unsqueeze(1)


def banded_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """Causal sliding-window attention (query i sees keys i-W+1 .. i) in O(T·W) time and memory.

    Queries in blocks of W attend to their own and the previous block of keys: the first block is plain
    causal attention, the others go through one 4-D SDPA call with a shared [W, 2W] band mask. Equal to
    SDPA with the dense [T, T] band mask, which costs O(T²) time and a T×T mask (4 GiB at 64K tokens).
    q, k, v: [B, H, T, D]; T need not be a multiple of W (the padded tail keys come after every real
    query, so the band hides them).
    """
    b, h, t, d = q.shape
    if t <= window:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    n = -(-t // window)
    q, k, v = (F.pad(x, (0, 0, 0, n * window - t)).view(b, h, n, window, d) for x in (q, k, v))
    first = F.scaled_dot_product_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], is_causal=True)
    kb, vb = (torch.cat([x[:, :, :-1], x[:, :, 1:]], dim=3).view(b, h * (n - 1), 2 * window, d) for x in (k, v))
    i = torch.arange(window, device=q.device)[:, None]
    j = torch.arange(2 * window, device=q.device)[None, :] - window  # key offset from the block's start
    band = (j <= i) & (i - j < window)
    rest = F.scaled_dot_product_attention(q[:, :, 1:].reshape(b, h * (n - 1), window, d), kb, vb, attn_mask=band)
    o = torch.cat([first.unsqueeze(2), rest.view(b, h, n - 1, window, d)], dim=2)
    return o.view(b, h, n * window, d)[:, :, :t]


class AttentionMixer(nn.Module):
    """Multi-head causal self-attention, full (``window=None``) or over a sliding window of ``window`` tokens.

    ``forward(x, layout, cache_layer)``: x [B, T, hidden_size]; ``cache_layer`` (a
    :class:`~ovq.models.cache.SlidingWindowLayer` or :class:`~ovq.models.cache.FullAttentionLayer`, or
    ``None``) supplies the earlier tokens' keys/values and receives the new ones.
    """

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, *, window: int | None = None,
                 rope: bool = False, rope_theta: float = 10000.0, layer_idx: int | None = None):
        super().__init__()
        self.num_heads, self.head_dim, self.window = num_heads, head_dim, window
        self.rope, self.rope_theta, self.layer_idx = rope, rope_theta, layer_idx
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(hidden_size, inner, bias=False)
        self.k_proj = nn.Linear(hidden_size, inner, bias=False)
        self.v_proj = nn.Linear(hidden_size, inner, bias=False)
        self.o_proj = nn.Linear(inner, hidden_size, bias=False)

    def forward(self, x: torch.Tensor, layout: TokenLayout, cache_layer: _KeyValueLayer | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        if self.rope:
            cos, sin = rotary_cos_sin(layout.positions.clamp_min(0), self.head_dim, self.rope_theta, q.dtype)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        past = cache_layer.read() if cache_layer is not None else None
        if past is None and not layout.has_padding and self.window is not None:
            o = banded_window_attention(q, k, v, self.window)
            if cache_layer is not None:
                cache_layer.update(k, v, layout.positions)
            return self.o_proj(o.transpose(1, 2).reshape(b, t, -1))
        mask = sdpa_mask(layout, past[2] if past is not None else None, self.window)
        keys, values = (k, v) if past is None else (torch.cat([past[0], k], dim=-2), torch.cat([past[1], v], dim=-2))
        if mask is None:
            o = F.scaled_dot_product_attention(q, keys, values, is_causal=True)
        else:
            o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        if cache_layer is not None:
            cache_layer.update(k, v, layout.positions)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, -1))

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, head_dim={self.head_dim}, window={self.window}, "
                f"rope={self.rope}")
