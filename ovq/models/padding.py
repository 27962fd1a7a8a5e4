"""Where each token of a (possibly left-padded) batch sits in its own sequence.

Batches of prompts of different lengths are **left-padded** (Hugging Face's convention for generation):
``attention_mask`` holds, per row, zeros for the pad tokens and then ones. The model must give every real
token the output it would get if its sequence ran alone. :class:`TokenLayout` carries what each mixer
needs for that:

- ``positions``: the position of every new token in its own sequence (pad tokens: -1). RoPE uses it, and
  the attention masks compare positions, so padding never shifts a window or a rotation.
- ``valid``: which new tokens are real (``None`` when all are): attention never attends to a pad key;
  fla's mixers take it as their padding mask.
- ``pad_lengths``: the leading pad tokens of each row, for the mixers that drop them (OVQ, VQ: their chunk
  boundaries and dictionary must see only real tokens; see :mod:`ovq.models.dictionary`).

Padding may only lead a sequence: once a cache holds tokens, every new token must be real.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenLayout:
    positions: torch.Tensor  # [B, T] long
    valid: torch.Tensor | None = None  # [B, T] bool, None: every token is real
    pad_lengths: torch.Tensor | None = None  # [B] long, None: no padding

    @property
    def has_padding(self) -> bool:
        return self.valid is not None


def token_layout(attention_mask: torch.Tensor | None, batch_size: int, seq_len: int, past_columns: int,
                 past_lengths: torch.Tensor | None, device: torch.device) -> TokenLayout:
    """Check ``attention_mask`` and place the ``seq_len`` new tokens of each row.

    attention_mask: ``[B, past_columns + seq_len]`` (the whole sequence, as ``generate`` passes it) or
    ``[B, seq_len]`` (the new tokens only), 1 for real tokens and 0 for left padding; ``None``: no padding.
    past_lengths: ``[B]`` real tokens each row already holds in the cache (``None``: none).
    """
    start = past_lengths.to(device).unsqueeze(1) if past_lengths is not None else torch.zeros(batch_size, 1, dtype=torch.long, device=device)
    if attention_mask is None:
        return TokenLayout(start + torch.arange(seq_len, device=device))
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2 or attention_mask.shape[0] != batch_size:
        raise ValueError(f"attention_mask must be a [batch, length] tensor with batch = {batch_size}, "
                         f"got {getattr(attention_mask, 'shape', type(attention_mask).__name__)}")
    if attention_mask.shape[1] not in (seq_len, past_columns + seq_len):
        raise ValueError(f"attention_mask must cover the new tokens ({seq_len}) or the whole sequence "
                         f"({past_columns + seq_len}), got {attention_mask.shape[1]} columns")
    if attention_mask.dtype != torch.bool and bool(((attention_mask != 0) & (attention_mask != 1)).any()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")
    valid = attention_mask[:, -seq_len:].to(device=device, dtype=torch.bool)
    if bool(valid.all()):
        return TokenLayout(start + torch.arange(seq_len, device=device))
    if past_columns > 0:
        raise ValueError("attention_mask marks padding among tokens that continue a cached sequence; "
                         "only left padding of the first call (the prompt) is supported")
    if bool((valid[:, 1:] < valid[:, :-1]).any()):
        raise ValueError("attention_mask must be left padding (each row: zeros, then ones); right padding and "
                         "holes are not supported")
    if not bool(valid[:, -1].all()):
        raise ValueError("attention_mask has a row without any real token")
    positions = (start + valid.long().cumsum(-1) - 1).masked_fill(~valid, -1)
    return TokenLayout(positions, valid, (~valid).sum(-1))
