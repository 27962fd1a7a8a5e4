"""Rotary position embedding (RoPE, rotate-half form) at explicit per-token positions."""

from __future__ import annotations

import torch


def rotary_cos_sin(positions: torch.Tensor, dim: int, theta: float, dtype: torch.dtype):
    """cos, sin of shape [B, 1, T, dim] for integer ``positions`` [B, T] (computed in float32 or wider)."""
    if dim % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {dim}")
    work = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = theta ** -(torch.arange(0, dim, 2, device=positions.device, dtype=work) / dim)
    angles = positions.to(work).unsqueeze(-1) * inv_freq  # [B, T, dim/2]
    angles = torch.cat([angles, angles], dim=-1).unsqueeze(1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, D] by the angles in cos/sin [B, 1, T, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
