"""Small helpers shared by the OVQ and VQ ops: normalization, dtypes and argument checks."""

from __future__ import annotations

import math
from numbers import Real

import torch

L2NORM_EPS = 1e-6
GROWTH_RULES = ("saturating", "linear")
BACKENDS = ("auto", "torch", "triton")


def l2norm(x: torch.Tensor) -> torch.Tensor:
    """``x / max(||x||, eps)`` over the last dim (``torch.nn.functional.normalize``'s rule).

    For any vector longer than ``eps`` this is exactly ``x / ||x||``, as the spec writes it.
    """
    return x / x.norm(dim=-1, keepdim=True).clamp_min(L2NORM_EPS)


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The state (and internal compute) dtype: float32 for 16/32-bit inputs, float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def growth_target(tokens: int, max_centroids: int, growth: str, growth_rate: float) -> int:
    """M(t'): how many centroids the dictionary should hold after absorbing ``tokens`` tokens."""
    if growth == "saturating":
        # Integer arithmetic: floor(N t' / (N + t')) stays below N for every t'.
        return (max_centroids * tokens) // (max_centroids + tokens)
    return min(max_centroids, math.floor(growth_rate * tokens))


def new_centroid_count(num_active: int, tokens_after: int, chunk_size: int, max_centroids: int,
                       growth: str, growth_rate: float) -> int:
    """n_new = clamp(M(t') - m, 0, L) for a chunk that brings the absorbed count to ``tokens_after``."""
    target = growth_target(tokens_after, max_centroids, growth, growth_rate)
    return max(0, min(target - num_active, chunk_size))


# ----------------------------------------------------------------------------------------------
# Argument checks. Every public op validates its arguments here, so the messages stay uniform.
# ----------------------------------------------------------------------------------------------

def check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_growth(growth, growth_rate) -> None:
    if growth not in GROWTH_RULES:
        raise ValueError(f"growth must be one of {GROWTH_RULES}, got {growth!r}")
    if isinstance(growth_rate, bool) or not isinstance(growth_rate, Real):
        raise TypeError(f"growth_rate must be a real number, got {type(growth_rate).__name__}")
    if not math.isfinite(growth_rate) or growth_rate <= 0:
        raise ValueError(f"growth_rate must be finite and > 0, got {growth_rate}")


def check_backend(backend) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def check_qkv(q, k, v) -> None:
    """q, k: [B, T, H, D]; v: [B, T, H, Dv]; floating point, one dtype, one device."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        if x.dim() != 4:
            raise ValueError(f"{name} must have shape [B, T, H, D] (4 dims), got {tuple(x.shape)}")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must match q in [B, T, H] = {tuple(q.shape[:3])}, got {tuple(v.shape[:3])}")
    if q.shape[-1] == 0 or v.shape[-1] == 0:
        raise ValueError("q/k and v need a non-empty head dimension")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")


def check_beta(beta, num_heads: int, device: torch.device) -> torch.Tensor | float:
    """A positive float, or a positive tensor of shape [H] (or a 0-dim tensor)."""
    if isinstance(beta, torch.Tensor):
        if not beta.is_floating_point():
            raise TypeError(f"beta must be a floating-point tensor, got dtype {beta.dtype}")
        if beta.dim() > 1 or (beta.dim() == 1 and beta.shape[0] != num_heads):
            raise ValueError(f"beta must be a float or a tensor of shape [H] = [{num_heads}], "
                             f"got shape {tuple(beta.shape)}")
        if beta.device != device:
            raise ValueError(f"beta must be on the device of q ({device}), got {beta.device}")
        if beta.device.type == "cpu":
            if not bool(torch.all(beta > 0)):
                raise ValueError("beta must be > 0 for every head")
        else:
            # No host sync on a GPU (it would stall every layer of every decoding step): a device-side
            # assert, which fails the next synchronizing call. The layers keep beta > 0 by construction.
            torch._assert_async(torch.all(beta > 0), "beta must be > 0 for every head")
        return beta
    if isinstance(beta, bool) or not isinstance(beta, Real):
        raise TypeError(f"beta must be a float or a tensor, got {type(beta).__name__}")
    if not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be finite and > 0, got {beta}")
    return float(beta)


def beta_view(beta: torch.Tensor | float, dtype: torch.dtype) -> torch.Tensor | float:
    """beta broadcastable against [B, H, Tq, Tk] logits."""
    if isinstance(beta, torch.Tensor):
        return beta.to(dtype).reshape(1, -1, 1, 1) if beta.dim() == 1 else beta.to(dtype)
    return beta
