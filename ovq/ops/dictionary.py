"""The two halves of OVQ, vectorized in PyTorch: reading a dictionary, and writing a chunk into it.

A *dictionary* is the active part of the state while a sequence is processed: tensors of shape
[B, H, n, ·] holding only the n centroids in use. Two kinds share one read path:

- :class:`OnlineDictionary` (OVQ): grows by farthest-point picks and learns by running means.
- :class:`StaticDictionary` (Transformer-VQ): a frozen codebook; writes only accumulate values/counts.

Everything here is batched over (B, H); the only loop is over the picks of one chunk, which is
sequential by definition (each pick depends on the last) and runs at most L times per chunk.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .state import OVQState, VQState
from .utils import l2norm, new_centroid_count


def dictionary_attention(qhat: torch.Tensor, beta, directions: torch.Tensor | None, values: torch.Tensor | None,
                         log_weights: torch.Tensor | None, keys: torch.Tensor, vals: torch.Tensor,
                         query_offset: int) -> torch.Tensor:
    """The read: one softmax over the centroids and the causal local keys.

    qhat: [B, H, Lq, D] unit queries; keys/vals: [B, H, Lk, ·] the local (unit) keys and values, where
    query i sits at key position ``query_offset + i`` and sees keys ``s <= query_offset + i``.
    directions: [B or 1, H, n, D] unit centroid keys, values: [B, H, n, Dv], log_weights: [B, H, n]
    (log count, 0 without the count prior, -inf for an empty code). ``directions=None`` reads keys only.
    """
    lq, lk = qhat.shape[-2], keys.shape[-2]
    local = beta * (qhat @ keys.transpose(-1, -2))
    q_pos = torch.arange(lq, device=qhat.device) + query_offset
    future = torch.arange(lk, device=qhat.device)[None, :] > q_pos[:, None]
    local = local.masked_fill(future, float("-inf"))
    if directions is None or directions.shape[-2] == 0:
        return torch.softmax(local, dim=-1) @ vals
    n = directions.shape[-2]
    central = beta * (qhat @ directions.transpose(-1, -2)) + log_weights.unsqueeze(-2)
    p = torch.softmax(torch.cat([central, local], dim=-1), dim=-1)
    return p[..., :n] @ values + p[..., n:] @ vals


@torch.no_grad()
def farthest_point_picks(sim: torch.Tensor, gram: torch.Tensor, num_picks: int) -> torch.Tensor:
    """Greedy farthest-point selection of ``num_picks`` tokens per (batch, head).

    sim: [B, H, L] each token's best similarity to the existing centroids (-inf if none);
    gram: [B, H, L, L] token-token similarities. Returns [B, H, num_picks] token indices in pick order.
    """
    sim = sim.clone()
    picked = torch.zeros_like(sim, dtype=torch.bool)
    picks = sim.new_empty(*sim.shape[:-1], num_picks, dtype=torch.long)
    for i in range(num_picks):
        # argmin returns the first minimum: ties go to the lowest token index, as the spec says.
        j = sim.masked_fill(picked, float("inf")).argmin(dim=-1, keepdim=True)  # [B, H, 1]
        picks[..., i:i + 1] = j
        picked.scatter_(-1, j, True)
        row = gram.gather(-2, j.unsqueeze(-1).expand(*j.shape, gram.shape[-1])).squeeze(-2)
        sim = torch.maximum(sim, row)
    return picks


def _scatter_rows(table: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """table[b, h, index[b, h, j]] += rows[b, h, j] (out of place, differentiable in both)."""
    return table.scatter_add(-2, index.unsqueeze(-1).expand(*index.shape, rows.shape[-1]), rows)


@dataclass
class OnlineDictionary:
    """OVQ's dictionary: centroid key sums, value sums and counts, [B, H, m, ·] (m active)."""

    sum_k: torch.Tensor
    sum_v: torch.Tensor
    count: torch.Tensor
    max_centroids: int
    growth: str
    growth_rate: float
    detach_state: bool = False

    @property
    def size(self) -> int:
        return self.count.shape[-1]

    def read_terms(self, count_prior: bool):
        log_w = self.count.log() if count_prior else torch.zeros_like(self.count)
        return l2norm(self.sum_k), self.sum_v / self.count.unsqueeze(-1), log_w

    def stored_terms(self):
        """(key sums, value sums, counts, keys need normalizing): what the Triton decode read takes."""
        return self.sum_k, self.sum_v, self.count, True

    def write(self, khat: torch.Tensor, v: torch.Tensor, tokens_after: int) -> "OnlineDictionary":
        """Absorb one full chunk (khat: [B, H, L, D] unit keys, v: [B, H, L, Dv]): grow, pick, assign, update."""
        m, chunk = self.size, khat.shape[-2]
        n_new = new_centroid_count(m, tokens_after, chunk, self.max_centroids, self.growth, self.growth_rate)
        if m + n_new == 0:
            # No centroid exists yet (e.g. N = 1 with saturating growth, whose target floor(t'/(1+t')) is 0):
            # the chunk has nowhere to go and is dropped; the dictionary stays empty.
            return self
        if self.detach_state:
            khat, v = khat.detach(), v.detach()
        with torch.no_grad():
            kd = khat.detach()
            sim_old = kd @ l2norm(self.sum_k.detach()).transpose(-1, -2)  # [B, H, L, m]
            gram = kd @ kd.transpose(-1, -2)  # [B, H, L, L]
            best_old = sim_old.amax(-1) if m > 0 else torch.full_like(kd[..., 0], float("-inf"))
            picks = farthest_point_picks(best_old, gram, n_new)  # [B, H, n_new]
            # A new centroid's direction is its founding token's unit key, so its similarities are gram rows.
            sim_new = gram.gather(-1, picks.unsqueeze(-2).expand(*picks.shape[:-1], chunk, n_new))
            assign = torch.cat([sim_old, sim_new], dim=-1).argmax(dim=-1)  # first max: lowest index wins ties
            # Each picked token opens (and is the only founding member of) its own new centroid m + i.
            opened = torch.arange(m, m + n_new, device=kd.device).expand_as(picks)
            assign.scatter_(-1, picks, opened)
        sum_k = _scatter_rows(F.pad(self.sum_k, (0, 0, 0, n_new)), assign, khat)
        sum_v = _scatter_rows(F.pad(self.sum_v, (0, 0, 0, n_new)), assign, v)
        count = F.pad(self.count, (0, n_new)).scatter_add(-1, assign, torch.ones_like(khat[..., 0]))
        return dataclasses.replace(self, sum_k=sum_k, sum_v=sum_v, count=count)

    @classmethod
    def from_state(cls, state: OVQState, detach_state: bool) -> "OnlineDictionary":
        m = state.num_centroids
        sum_k, sum_v, count = state.sum_k[:, :, :m], state.sum_v[:, :, :m], state.count[:, :, :m]
        if detach_state:
            sum_k, sum_v = sum_k.detach(), sum_v.detach()
        return cls(sum_k, sum_v, count, state.max_centroids, state.growth, state.growth_rate, detach_state)

    def to_state(self, buffer_k, buffer_v, buffer_len: int, num_absorbed: int) -> OVQState:
        pad = self.max_centroids - self.size
        return OVQState(sum_k=F.pad(self.sum_k, (0, 0, 0, pad)), sum_v=F.pad(self.sum_v, (0, 0, 0, pad)),
                        count=F.pad(self.count, (0, pad)), buffer_k=buffer_k, buffer_v=buffer_v,
                        buffer_len=buffer_len, num_absorbed=num_absorbed, num_centroids=self.size,
                        growth=self.growth, growth_rate=self.growth_rate)

    def store(self, state: OVQState) -> None:
        """Copy into ``state``'s preallocated tensors, in place (decoding)."""
        m = self.size
        state.sum_k[:, :, :m].copy_(self.sum_k)
        state.sum_v[:, :, :m].copy_(self.sum_v)
        state.count[:, :, :m].copy_(self.count)
        state.num_centroids = m


@dataclass
class StaticDictionary:
    """Transformer-VQ's cache: a frozen unit codebook [H, S, D] with per-code value sums and counts."""

    codebook: torch.Tensor
    sum_v: torch.Tensor
    count: torch.Tensor
    detach_state: bool = False

    def read_terms(self, count_prior: bool):
        used = self.count > 0
        log_w = self.count.log() if count_prior else torch.zeros_like(self.count)
        log_w = torch.where(used, log_w, torch.full_like(log_w, float("-inf")))  # an empty code is not read
        return self.codebook.unsqueeze(0), self.sum_v / self.count.clamp_min(1).unsqueeze(-1), log_w

    def stored_terms(self):
        return self.codebook.unsqueeze(0), self.sum_v, self.count, False

    def write(self, khat: torch.Tensor, v: torch.Tensor, tokens_after: int) -> "StaticDictionary":
        if self.detach_state:
            v = v.detach()
        with torch.no_grad():
            assign = (khat.detach() @ self.codebook.transpose(-1, -2)).argmax(dim=-1)  # [B, H, L]
        sum_v = _scatter_rows(self.sum_v, assign, v)
        count = self.count.scatter_add(-1, assign, torch.ones_like(khat[..., 0]))
        return dataclasses.replace(self, sum_v=sum_v, count=count)

    @classmethod
    def from_state(cls, state: VQState, codebook: torch.Tensor, detach_state: bool) -> "StaticDictionary":
        sum_v = state.sum_v.detach() if detach_state else state.sum_v
        return cls(codebook, sum_v, state.count, detach_state)

    def to_state(self, buffer_k, buffer_v, buffer_len: int, num_absorbed: int) -> VQState:
        return VQState(sum_v=self.sum_v, count=self.count, buffer_k=buffer_k, buffer_v=buffer_v,
                       buffer_len=buffer_len, num_absorbed=num_absorbed)

    def store(self, state: VQState) -> None:
        state.sum_v.copy_(self.sum_v)
        state.count.copy_(self.count)
