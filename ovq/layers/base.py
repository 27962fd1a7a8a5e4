"""What the OVQ and VQ layers share: q/k/v/o projections, per-head inverse temperature, output gate."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.utils import check_bool, check_int


class DictionaryAttentionBase(nn.Module):
    """Multi-head projections around a dictionary-attention op; subclasses supply ``mix``.

    The inverse temperature is learned per head as ``beta = exp(log_beta)`` (always positive). q and k are
    L2-normalized inside the ops, so beta alone sets how sharp the reads are.
    """

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int | None = None, *, chunk_size: int = 128,
                 count_prior: bool = True, beta_init: float = 12.0, output_gate: bool = False, bias: bool = False,
                 detach_state: bool = False, layer_idx: int | None = None):
        super().__init__()
        check_int("hidden_size", hidden_size)
        check_int("num_heads", num_heads)
        if head_dim is None:
            if hidden_size % num_heads:
                raise ValueError(f"num_heads ({num_heads}) must divide hidden_size ({hidden_size}) "
                                 "when head_dim is not given")
            head_dim = hidden_size // num_heads
        check_int("head_dim", head_dim)
        check_int("chunk_size", chunk_size)
        check_bool("count_prior", count_prior)
        check_bool("output_gate", output_gate)
        check_bool("detach_state", detach_state)
        if not (isinstance(beta_init, (int, float)) and math.isfinite(beta_init) and beta_init > 0):
            raise ValueError(f"beta_init must be a finite number > 0, got {beta_init!r}")
        self.hidden_size, self.num_heads, self.head_dim = hidden_size, num_heads, head_dim
        self.chunk_size, self.count_prior, self.detach_state = chunk_size, count_prior, detach_state
        self.layer_idx = layer_idx
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(hidden_size, inner, bias=bias)
        self.k_proj = nn.Linear(hidden_size, inner, bias=bias)
        self.v_proj = nn.Linear(hidden_size, inner, bias=bias)
        self.g_proj = nn.Linear(hidden_size, inner, bias=bias) if output_gate else None
        self.o_proj = nn.Linear(inner, hidden_size, bias=bias)
        self.log_beta = nn.Parameter(torch.full((num_heads,), math.log(beta_init)))

    @property
    def beta(self) -> torch.Tensor:
        return self.log_beta.exp()

    def _decode_step(self, state, seq_len: int) -> bool:
        """Short continuations of a state at inference take the token-by-token path (in place)."""
        return state is not None and not torch.is_grad_enabled() and seq_len < self.chunk_size

    def forward(self, x: torch.Tensor, state=None, use_cache: bool = False):
        """x: [B, T, hidden_size]. Returns ``(y [B, T, hidden_size], state or None)``.

        ``state`` continues from an earlier call (it may be updated in place: keep the returned one);
        ``use_cache=True`` returns the state after the last token.
        """
        if x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must have shape [B, T, {self.hidden_size}], got {tuple(x.shape)}")
        b, t, _ = x.shape
        q, k, v = (proj(x).view(b, t, self.num_heads, self.head_dim) for proj in (self.q_proj, self.k_proj, self.v_proj))
        o, state = self.mix(q, k, v, state, use_cache or state is not None)
        o = o.reshape(b, t, -1)
        if self.g_proj is not None:
            o = o * F.sigmoid(self.g_proj(x))
        return self.o_proj(o), (state if use_cache else None)

    def mix(self, q, k, v, state, output_final_state: bool):
        raise NotImplementedError
