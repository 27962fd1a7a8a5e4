"""``VQAttention``: the Transformer-VQ baseline (Lingle 2023) on OVQ's read path.

The keys are vector-quantized against a codebook learned in training by EMA k-means (spherical: codes
are unit vectors, the mean direction of the unit keys assigned to them), with straight-through
gradients to the keys and a commitment loss ``||k̂ - sg(ĉ)||²``. At inference the codebook is frozen;
the cache holds per-code value sums and counts (:class:`ovq.ops.VQState`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..ops import VQState, vq_attention, vq_step
from ..ops.utils import check_int, l2norm, state_dtype
from .base import DictionaryAttentionBase


class VQAttention(DictionaryAttentionBase):
    """Multi-head VQ attention with an EMA-learned codebook of ``codebook_size`` codes per head.

    After a training forward, ``self.commit_loss`` holds the commitment loss (a scalar tensor in the
    graph) for the training loop to add, weighted; it is ``None`` in eval mode.
    """

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int | None = None, *, codebook_size: int = 1024,
                 ema_decay: float = 0.99, **kwargs):
        super().__init__(hidden_size, num_heads, head_dim, **kwargs)
        check_int("codebook_size", codebook_size)
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        self.codebook_size, self.ema_decay = codebook_size, ema_decay
        shape = (self.num_heads, codebook_size, self.head_dim)
        self.register_buffer("codebook_sum", l2norm(torch.randn(shape)))  # EMA of summed unit keys
        self.register_buffer("codebook_count", torch.ones(shape[:2]))  # EMA of assignment counts
        self.register_buffer("codebook_initialized", torch.zeros((), dtype=torch.bool))
        self.commit_loss: torch.Tensor | None = None

    @property
    def codebook(self) -> torch.Tensor:
        """[H, S, D] unit codes."""
        return l2norm(self.codebook_sum)

    def init_state(self, batch_size: int, device=None) -> VQState:
        return VQState.empty(batch_size, self.num_heads, self.head_dim, chunk_size=self.chunk_size,
                             codebook_size=self.codebook_size,
                             device=device if device is not None else self.log_beta.device)

    @torch.no_grad()
    def _update_codebook(self, khat: torch.Tensor, assign: torch.Tensor) -> None:
        """One EMA k-means step from this batch's unit keys [B, T, H, D] and their codes [B, T, H]."""
        h, s, d = self.codebook_sum.shape
        keys = khat.to(self.codebook_sum.dtype).permute(2, 0, 1, 3).reshape(h, -1, d)  # [H, B*T, D]
        codes = assign.permute(2, 0, 1).reshape(h, -1)
        if not bool(self.codebook_initialized):
            # Seed the codes with keys of the first batch (uniformly, with replacement if it is short).
            pick = torch.randint(keys.shape[1], (h, s), device=keys.device)
            self.codebook_sum.copy_(keys.gather(1, pick.unsqueeze(-1).expand(h, s, d)))
            self.codebook_initialized.fill_(True)
            return
        sums = torch.zeros_like(self.codebook_sum).scatter_add_(1, codes.unsqueeze(-1).expand(-1, -1, d), keys)
        counts = torch.zeros_like(self.codebook_count).scatter_add_(1, codes, torch.ones_like(codes, dtype=keys.dtype))
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        self.codebook_sum.lerp_(sums, 1 - self.ema_decay)
        self.codebook_count.lerp_(counts, 1 - self.ema_decay)

    def mix(self, q, k, v, state, output_final_state):
        dtype = state_dtype(k.dtype)  # float32 (float64 for a float64 layer), as inside the ops
        codebook = self.codebook.to(dtype)
        khat = l2norm(k.to(dtype))
        with torch.no_grad():
            assign = torch.einsum("bthd,hsd->bths", khat, codebook).argmax(-1)  # [B, T, H]
        codes = codebook.unsqueeze(0).expand(khat.shape[0], -1, -1, -1)  # [B, H, S, D]
        quantized = codes.gather(2, assign.transpose(1, 2).unsqueeze(-1).expand(-1, -1, -1, khat.shape[-1]))
        quantized = quantized.transpose(1, 2)  # [B, T, H, D]
        self.commit_loss = (khat - quantized).square().sum(-1).mean() if self.training else None
        if self.training:  # this forward used the codes as they were; the EMA step serves the next one
            self._update_codebook(khat, assign)
        # Straight-through. q, k, v keep the input dtype (bf16 under autocast), as OVQ's do: float32 inputs
        # would send the Triton kernels down their slow float32 dot path (measured 25K vs 700K tokens/s).
        # The op assigns in float32 against the float32 codebook, so a rounded code still finds itself.
        k_q = (khat + (quantized - khat).detach()).to(k.dtype)
        out_dtype = v.dtype
        config = dict(chunk_size=self.chunk_size, count_prior=self.count_prior)
        if self._decode_step(state, q.shape[1]):
            o, state = vq_step(q, k_q, v, self.beta, codebook, state, **config)
        else:
            o, state = vq_attention(q, k_q, v, self.beta, codebook, **config, detach_state=self.detach_state,
                                    initial_state=state, output_final_state=output_final_state)
        return o.to(out_dtype), state

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"chunk_size={self.chunk_size}, codebook_size={self.codebook_size}")
