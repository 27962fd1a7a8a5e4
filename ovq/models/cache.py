"""``OVQCache``: one cache object for a model whose layers use different mixers.

It is a ``transformers.Cache`` with one layer cache per model layer, each holding exactly what its mixer
needs to continue a sequence:

=========  ===========================  =====================================================
mixer      layer cache                  holds (memory in generated tokens)
=========  ===========================  =====================================================
``swa``    :class:`SlidingWindowLayer`  the last W-1 keys/values in a ring buffer (constant)
``attn``   :class:`FullAttentionLayer`  every key/value (grows by one token per token)
``ovq``    :class:`DictionaryLayer`     the :class:`~ovq.ops.OVQState` per row group (constant)
``vq``     :class:`DictionaryLayer`     the :class:`~ovq.ops.VQState` per row group (constant)
``mamba2`` ``fla.models.utils.FLALayer``  fla's recurrent and conv states (constant)
``gdn``    ``fla.models.utils.FLALayer``  fla's recurrent and conv states (constant)
=========  ===========================  =====================================================

fla's layers read and write their states through fla's cache protocol, which this class implements the
way ``fla.models.utils.Cache`` does: ``cache[layer_idx]`` is that layer's state dict (``None`` before its
first call; fla's ``get_layer_cache`` then starts fresh) and ``cache.update(layer_idx=i,
recurrent_state=..., conv_state=..., offset=...)`` stores them, in fla's own ``FLALayer``.

:meth:`OVQCache.nbytes` reports what the cache holds; ``lengths`` the real tokens of each row.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from ..ops import DictionaryState
from .configuration_ovq import FLA_MIXERS, OVQLMConfig


def tensor_nbytes(obj) -> int:
    """Bytes of every tensor in a (nested) tensor / dict / list / tuple / dataclass state."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, DictionaryState):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(tensor_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_nbytes(v) for v in obj)
    return 0


def _select_state_rows(state: DictionaryState, index: torch.Tensor) -> DictionaryState:
    """The state restricted to (and reordered as) batch rows ``index``."""
    return dataclasses.replace(state, **{f.name: getattr(state, f.name).index_select(0, index.to(state.device))
                                         for f in dataclasses.fields(state)
                                         if isinstance(getattr(state, f.name), torch.Tensor)})


class _OVQLayerCache(CacheLayerMixin):
    """What the layer caches of this module share: a column count and row selection (beams, expansion)."""

    is_compileable = False
    is_croppable = False

    def __init__(self):
        super().__init__()
        self.seen_tokens = 0  # columns consumed, padding included (what generate's bookkeeping counts)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor | None = None) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def get_seq_length(self) -> int:
        return self.seen_tokens

    def get_max_length(self) -> int:
        return -1

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen_tokens + query_length, 0

    def select_rows(self, index: torch.Tensor) -> None:
        raise NotImplementedError

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.seen_tokens:
            self.select_rows(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)

    def crop(self, max_length: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot roll back: it does not keep past states")

    def offload(self):
        raise NotImplementedError(f"{type(self).__name__} does not support offloading")

    def prefetch(self):
        raise NotImplementedError(f"{type(self).__name__} does not support offloading")

    def nbytes(self) -> int:
        raise NotImplementedError


class _KeyValueLayer(_OVQLayerCache):
    """Keys/values [B, H, S, D] with the position of each slot's token in its sequence [B, S] (-1: empty)."""

    def __init__(self):
        super().__init__()
        self.keys = self.values = self.positions = None

    def read(self):
        """(keys, values, positions) of the cached tokens, or None before the first update."""
        return None if self.keys is None else (self.keys, self.values, self.positions)

    def select_rows(self, index: torch.Tensor) -> None:
        if self.keys is not None:
            index = index.to(self.keys.device)
            self.keys, self.values = self.keys.index_select(0, index), self.values.index_select(0, index)
            self.positions = self.positions.index_select(0, index)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.keys is not None:
            self.keys = self.keys.repeat_interleave(repeats, dim=0)
            self.values = self.values.repeat_interleave(repeats, dim=0)
            self.positions = self.positions.repeat_interleave(repeats, dim=0)

    def reset(self) -> None:
        self.keys = self.values = self.positions = None
        self.seen_tokens = 0
        self.is_initialized = False

    def nbytes(self) -> int:
        return tensor_nbytes((self.keys, self.values, self.positions))


class FullAttentionLayer(_KeyValueLayer):
    """The ``attn`` mixer's growing KV cache (pad tokens are kept, with position -1, and never attended)."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, positions: torch.Tensor):
        if self.keys is None:
            self.lazy_initialization(key_states)
            self.keys, self.values, self.positions = key_states, value_states, positions
        else:
            self.keys = torch.cat([self.keys, key_states], dim=-2)
            self.values = torch.cat([self.values, value_states], dim=-2)
            self.positions = torch.cat([self.positions, positions], dim=-1)
        self.seen_tokens += key_states.shape[-2]
        return self.keys, self.values


class SlidingWindowLayer(_KeyValueLayer):
    """The ``swa`` mixer's cache: a ring buffer of the last ``window_size - 1`` keys/values of each row.

    A query at position p sees the keys at positions p-W+1 .. p: the W-1 before it come from here, itself
    from the current call. Token at position p lives in slot ``p % (W-1)``; slots carry their token's
    position, so attention never depends on slot order. The buffers are allocated at full size on the first
    update and rewritten in place at inference: memory does not change while generating.
    """

    is_sliding = True

    def __init__(self, window_size: int):
        super().__init__()
        self.window_size = window_size
        self.capacity = window_size - 1

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, positions: torch.Tensor):
        b, h, t, _ = key_states.shape
        self.seen_tokens += t
        if self.capacity == 0:
            return self.keys, self.values
        if self.keys is None:
            self.lazy_initialization(key_states)
            self.keys = key_states.new_zeros(b, h, self.capacity, key_states.shape[-1])
            self.values = value_states.new_zeros(b, h, self.capacity, value_states.shape[-1])
            self.positions = positions.new_full((b, self.capacity), -1)
        n = min(t, self.capacity)  # only the last W-1 new tokens can be seen again
        keys, values, pos = key_states[:, :, -n:], value_states[:, :, -n:], positions[:, -n:]
        # Pad tokens (position -1, only ever in a first call) go to slot W-2 as empty rows; that slot is free,
        # since a row with padding in its last n tokens has fewer than n <= W-1 real ones (slots 0..).
        real = (pos >= 0)[:, None, :, None]
        keys, values = keys * real, values * real
        slots = pos.remainder(self.capacity)
        kv_slots = slots[:, None, :, None]
        if torch.is_grad_enabled():  # keep autograd's view of earlier reads intact
            self.keys = self.keys.scatter(2, kv_slots.expand_as(keys), keys)
            self.values = self.values.scatter(2, kv_slots.expand_as(values), values)
            self.positions = self.positions.scatter(1, slots, pos)
        else:
            self.keys.scatter_(2, kv_slots.expand_as(keys), keys)
            self.values.scatter_(2, kv_slots.expand_as(values), values)
            self.positions.scatter_(1, slots, pos)
        return self.keys, self.values


@dataclasses.dataclass
class RowGroup:
    """Batch rows that share one OVQ/VQ state (``rows=None``: every row, in order)."""

    rows: torch.Tensor | None
    state: DictionaryState


class DictionaryLayer(_OVQLayerCache):
    """The ``ovq``/``vq`` mixers' cache: their states, one per group of rows (see :mod:`.dictionary`)."""

    def __init__(self):
        super().__init__()
        self.groups: list[RowGroup] = []

    def update(self, groups: list[RowGroup], num_columns: int):
        if not self.is_initialized and groups:
            self.lazy_initialization(groups[0].state.sum_v)
        self.groups = groups
        self.seen_tokens += num_columns
        return groups

    def _batch_size(self) -> int:
        return sum(g.state.shape[0] for g in self.groups)

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep (and reorder to) batch rows ``index``; rows that came from one group stay in one group."""
        index = index.to(torch.long)
        if len(self.groups) == 1 and self.groups[0].rows is None:
            self.groups = [RowGroup(None, _select_state_rows(self.groups[0].state, index))]
            return
        lookup = torch.full((self._batch_size(),), -1, dtype=torch.long, device=index.device)
        groups = []
        for group in self.groups:
            rows = group.rows.to(index.device)
            lookup.fill_(-1)
            lookup[rows] = torch.arange(len(rows), device=index.device)
            new_rows = torch.nonzero(lookup[index] >= 0).flatten()
            if len(new_rows):
                groups.append(RowGroup(new_rows, _select_state_rows(group.state, lookup[index[new_rows]])))
        self.groups = groups

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.groups:
            self.select_rows(torch.arange(self._batch_size()).repeat_interleave(repeats))

    def reset(self) -> None:
        self.groups = []
        self.seen_tokens = 0
        self.is_initialized = False

    def nbytes(self) -> int:
        return sum(g.state.nbytes for g in self.groups)


def _fla_layer():
    from fla.models.utils import FLALayer  # imported only for models that have fla mixers

    return FLALayer()


class OVQCache(Cache):
    """Per-layer caches for an :class:`~ovq.models.OVQForCausalLM` (see the module docstring).

    Build it from the model's config (``OVQCache(model.config)``) or let the model build it
    (``use_cache=True``, as ``generate()`` does).
    """

    def __init__(self, config: OVQLMConfig):
        layers = []
        for kind in config.mixers:
            if kind == "swa":
                layers.append(SlidingWindowLayer(config.window_size))
            elif kind == "attn":
                layers.append(FullAttentionLayer())
            elif kind in FLA_MIXERS:
                layers.append(_fla_layer())
            else:
                layers.append(DictionaryLayer())
        super().__init__(layers=layers)
        self.mixers = list(config.mixers)
        self.lengths: torch.Tensor | None = None  # [B] real tokens of each row (padding excluded)

    # fla's cache protocol, for the fla mixers (as fla.models.utils.Cache implements it).
    def __getitem__(self, layer_idx: int) -> dict[str, Any] | None:
        self._check_fla_layer(layer_idx)
        return self.layers[layer_idx].state

    def _check_fla_layer(self, layer_idx: int) -> None:
        if self.mixers[layer_idx] not in FLA_MIXERS:
            raise TypeError(f"layer {layer_idx} is a {self.mixers[layer_idx]!r} mixer; only fla mixers use "
                            "fla's cache protocol (cache[i], cache.update(...)); read cache.layers[i]")

    def update(self, recurrent_state=None, attn_state=None, conv_state=None, ffn_state=None, layer_idx: int = 0,
               offset: int | None = 1, cache_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        self._check_fla_layer(layer_idx)
        return self.layers[layer_idx].update(recurrent_state=recurrent_state, attn_state=attn_state,
                                             conv_state=conv_state, ffn_state=ffn_state,
                                             offset=1 if offset is None else offset, cache_kwargs=cache_kwargs)

    def get_seq_length(self, layer_idx: int = 0, cache_position=None) -> int:
        """Columns (tokens, padding included) seen so far."""
        return self.layers[layer_idx].get_seq_length() if layer_idx < len(self.layers) else 0

    def record_lengths(self, new_tokens: torch.Tensor) -> None:
        """Add each row's real new tokens ([B]) to ``lengths`` (the model calls this after each forward)."""
        self.lengths = new_tokens if self.lengths is None else self.lengths + new_tokens

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for layer in self.layers:
            layer.reorder_cache(beam_idx)
        if self.lengths is not None:
            self.lengths = self.lengths.index_select(0, beam_idx.to(self.lengths.device))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        for layer in self.layers:
            layer.batch_repeat_interleave(repeats)
        if self.lengths is not None:
            self.lengths = self.lengths.repeat_interleave(repeats, dim=0)

    def reset(self) -> None:
        super().reset()
        self.lengths = None

    def layer_nbytes(self) -> list[int]:
        """Bytes each layer's cache holds now."""
        return [layer.nbytes() if isinstance(layer, _OVQLayerCache) else tensor_nbytes(layer.state)
                for layer in self.layers]

    def nbytes(self) -> int:
        """Bytes the whole cache holds now (constant while generating, unless a layer is ``attn``)."""
        return sum(self.layer_nbytes())
