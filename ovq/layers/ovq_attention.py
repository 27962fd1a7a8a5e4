"""``OVQAttention``: the OVQ mixer as a PyTorch layer (no positional encoding, like the paper's)."""

from __future__ import annotations

from ..ops import OVQState, ovq_attention, ovq_step
from ..ops.utils import check_growth, check_int
from .base import DictionaryAttentionBase


class OVQAttention(DictionaryAttentionBase):
    """Multi-head OVQ attention: ``y = o_proj(gate * ovq_attention(q_proj x, k_proj x, v_proj x, beta))``.

    ``max_centroids`` (N) is the memory budget. It is not a weight: change it on a trained layer
    (``layer.max_centroids = 4096``) to deploy with another budget; states made with the old N are then
    rejected by the op.
    """

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int | None = None, *, chunk_size: int = 128,
                 max_centroids: int = 1024, growth: str = "saturating", growth_rate: float = 1.0, **kwargs):
        super().__init__(hidden_size, num_heads, head_dim, chunk_size=chunk_size, **kwargs)
        check_growth(growth, growth_rate)
        self.max_centroids = max_centroids
        self.growth, self.growth_rate = growth, float(growth_rate)

    @property
    def max_centroids(self) -> int:
        return self._max_centroids

    @max_centroids.setter
    def max_centroids(self, value: int) -> None:
        self._max_centroids = check_int("max_centroids", value)

    def _op_config(self) -> dict:
        return dict(chunk_size=self.chunk_size, max_centroids=self.max_centroids, growth=self.growth,
                    growth_rate=self.growth_rate, count_prior=self.count_prior)

    def init_state(self, batch_size: int, device=None) -> OVQState:
        """An empty float32 state for this layer (what the first call with ``use_cache=True`` builds)."""
        return OVQState.empty(batch_size, self.num_heads, self.head_dim, chunk_size=self.chunk_size,
                              max_centroids=self.max_centroids, growth=self.growth, growth_rate=self.growth_rate,
                              device=device if device is not None else self.log_beta.device)

    def mix(self, q, k, v, state, output_final_state):
        if self._decode_step(state, q.shape[1]):
            return ovq_step(q, k, v, self.beta, state, **self._op_config())
        return ovq_attention(q, k, v, self.beta, **self._op_config(), detach_state=self.detach_state,
                             initial_state=state, output_final_state=output_final_state)

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"chunk_size={self.chunk_size}, max_centroids={self.max_centroids}, growth={self.growth!r}")
