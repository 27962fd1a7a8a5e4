"""The recurrent state of OVQ attention (and of the static-codebook VQ baseline).

Everything a sequence leaves behind is here: per (batch, head) the centroid sums and counts, and the
pending buffer of the current, unfinished chunk. Tensors are allocated at their full capacity (N
centroids, L buffered tokens) so the state's memory is fixed from the first token: it never grows with
the sequence, and the same buffers can be reused step after step (CUDA graphs, static caches).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


def _nbytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def kv_cache_nbytes(num_tokens: int, num_heads: int, head_dim: int, value_dim: int | None = None,
                    dtype: torch.dtype = torch.bfloat16, batch_size: int = 1) -> int:
    """Bytes of a self-attention KV cache holding ``num_tokens`` tokens (for comparisons)."""
    value_dim = head_dim if value_dim is None else value_dim
    itemsize = torch.empty((), dtype=dtype).element_size()
    return batch_size * num_heads * num_tokens * (head_dim + value_dim) * itemsize


@dataclass(kw_only=True)
class DictionaryState:
    """What OVQ and VQ caches share: value sums, counts, absorbed-token count and the pending buffer.

    Shapes (B batch, H heads, C centroid capacity, L chunk size, D key dim, Dv value dim):

    - ``sum_v``: [B, H, C, Dv], sum of the values merged into each centroid.
    - ``count``: [B, H, C], tokens merged into each centroid (a float; exact up to 2**24 per centroid).
    - ``buffer_k``: [B, H, L, D], unit keys of the unfinished chunk (first ``buffer_len`` rows valid).
    - ``buffer_v``: [B, H, L, Dv], their values.
    - ``buffer_len``: tokens waiting in the buffer (< L between calls).
    - ``num_absorbed``: tokens written into the dictionary so far (a multiple of L).
    """

    sum_v: torch.Tensor
    count: torch.Tensor
    buffer_k: torch.Tensor
    buffer_v: torch.Tensor
    buffer_len: int = 0
    num_absorbed: int = 0

    @property
    def chunk_size(self) -> int:
        return self.buffer_k.shape[2]

    @property
    def capacity(self) -> int:
        return self.count.shape[2]

    @property
    def num_tokens(self) -> int:
        """Every token this state has seen: the absorbed ones and the buffered ones."""
        return self.num_absorbed + self.buffer_len

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(B, H, D, Dv)."""
        b, h, _, d = self.buffer_k.shape
        return b, h, d, self.buffer_v.shape[-1]

    @property
    def dtype(self) -> torch.dtype:
        return self.sum_v.dtype

    @property
    def device(self) -> torch.device:
        return self.sum_v.device

    def _tensor_fields(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), torch.Tensor)]

    def _map(self, fn):
        return dataclasses.replace(self, **{name: fn(getattr(self, name)) for name in self._tensor_fields()})

    def detach(self):
        return self._map(torch.Tensor.detach)

    def clone(self):
        return self._map(torch.Tensor.clone)

    def to(self, *args, **kwargs):
        return self._map(lambda t: t.to(*args, **kwargs))

    @property
    def nbytes(self) -> int:
        """Bytes held by the state's tensors (fixed by the configuration, not by the sequence length)."""
        return _nbytes(*(getattr(self, name) for name in self._tensor_fields()))


@dataclass(kw_only=True)
class OVQState(DictionaryState):
    """OVQ's state: an online dictionary of at most ``max_centroids`` key/value centroids.

    Adds to :class:`DictionaryState`:

    - ``sum_k``: [B, H, N, D], sum of the unit keys merged into each centroid; the centroid's key
      direction is ``sum_k / ||sum_k||`` and its value ``sum_v / count``.
    - ``num_centroids``: active centroids m (rows ``[0, m)`` are valid; the same for every batch row
      and head, since growth depends only on position).
    - ``growth``, ``growth_rate``: the growth rule the dictionary was built with.

    ``max_centroids`` (N) is the capacity of ``sum_k``. The state is only valid with the configuration
    it was made with: passing it to an op with another chunk size, N or growth rule is an error.
    """

    sum_k: torch.Tensor
    num_centroids: int = 0
    growth: str = "saturating"
    growth_rate: float = 1.0

    @property
    def max_centroids(self) -> int:
        return self.capacity

    @classmethod
    def empty(cls, batch_size: int, num_heads: int, head_dim: int, value_dim: int | None = None, *,
              chunk_size: int = 64, max_centroids: int = 1024, growth: str = "saturating",
              growth_rate: float = 1.0, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> "OVQState":
        """A state that has seen nothing, with every buffer allocated at full capacity."""
        value_dim = head_dim if value_dim is None else value_dim
        b, h = batch_size, num_heads

        def zeros(*shape):
            return torch.zeros(*shape, dtype=dtype, device=device)

        return cls(sum_k=zeros(b, h, max_centroids, head_dim), sum_v=zeros(b, h, max_centroids, value_dim),
                   count=zeros(b, h, max_centroids), buffer_k=zeros(b, h, chunk_size, head_dim),
                   buffer_v=zeros(b, h, chunk_size, value_dim), growth=growth, growth_rate=float(growth_rate))

    @staticmethod
    def max_nbytes(num_heads: int, head_dim: int, value_dim: int | None = None, *, max_centroids: int,
                   chunk_size: int, batch_size: int = 1, dtype: torch.dtype = torch.float32) -> int:
        """The spec's bound: N·(D+Dv+1) numbers plus the L-token buffer L·(D+Dv), per (batch, head)."""
        value_dim = head_dim if value_dim is None else value_dim
        itemsize = torch.empty((), dtype=dtype).element_size()
        per_head = max_centroids * (head_dim + value_dim + 1) + chunk_size * (head_dim + value_dim)
        return batch_size * num_heads * per_head * itemsize


@dataclass(kw_only=True)
class VQState(DictionaryState):
    """The static-codebook (Transformer-VQ) cache: per-code value sums and counts, plus the buffer.

    The codebook itself is a parameter of the layer, not part of the state; ``capacity`` is its size S.
    """

    @property
    def codebook_size(self) -> int:
        return self.capacity

    @classmethod
    def empty(cls, batch_size: int, num_heads: int, head_dim: int, value_dim: int | None = None, *,
              chunk_size: int = 64, codebook_size: int = 1024, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> "VQState":
        value_dim = head_dim if value_dim is None else value_dim
        b, h = batch_size, num_heads

        def zeros(*shape):
            return torch.zeros(*shape, dtype=dtype, device=device)

        return cls(sum_v=zeros(b, h, codebook_size, value_dim), count=zeros(b, h, codebook_size),
                   buffer_k=zeros(b, h, chunk_size, head_dim), buffer_v=zeros(b, h, chunk_size, value_dim))
