"""Running the OVQ and VQ mixers over a batch whose rows may start with padding.

An OVQ state is shared by its batch rows in one respect: the number of active centroids, the tokens
absorbed and the pending buffer are the same for every row, because chunk boundaries and growth depend
only on position. A left-padded row is at another position than its neighbours, and its pad tokens must
neither enter its dictionary nor shift its chunk boundaries. So rows are grouped by their number of
leading pad tokens, and each group runs on its own real tokens only (``x[rows, pad:]``) with its own state:

- no padding (the usual case): one group, the whole batch, no indexing at all;
- left padding: one group per distinct pad length; pad positions get a zero output (nobody reads it).

The groups are fixed by the first call (the prompt) and kept in the cache
(:class:`~ovq.models.cache.DictionaryLayer`); every later call adds the same number of real tokens to
every row, so the groups stay valid while generating. This is exact: each row gets what it gets alone.
The cost is one op call per distinct pad length in these layers (the other mixers stay batched).
"""

from __future__ import annotations

import torch

from ..layers import OVQAttention, VQAttention
from .cache import DictionaryLayer, RowGroup
from .padding import TokenLayout


def _first_call_groups(layout: TokenLayout, batch_size: int) -> list[tuple[torch.Tensor | None, int, None]]:
    """(rows, leading pads, state=None) per distinct pad length; one all-rows group without padding."""
    if layout.pad_lengths is None:
        return [(None, 0, None)]
    pads = layout.pad_lengths.tolist()
    return [(torch.tensor([r for r in range(batch_size) if pads[r] == p], device=layout.positions.device), p, None)
            for p in sorted(set(pads))]


def dictionary_forward(mixer: OVQAttention | VQAttention, x: torch.Tensor, layout: TokenLayout,
                       cache_layer: DictionaryLayer | None = None) -> torch.Tensor:
    """``mixer`` over x [B, T, hidden_size], row group by row group; updates ``cache_layer`` if given.

    For a VQ mixer in training, ``mixer.commit_loss`` ends as the token-weighted mean over the groups.
    """
    b, t, _ = x.shape
    if cache_layer is not None and cache_layer.groups:
        groups = [(g.rows, 0, g.state) for g in cache_layer.groups]
    else:
        groups = _first_call_groups(layout, b)
    if len(groups) == 1 and groups[0][0] is None:
        y, state = mixer(x, state=groups[0][2], use_cache=cache_layer is not None)
        if cache_layer is not None:
            cache_layer.update([RowGroup(None, state)], t)
        return y
    y = x.new_zeros(x.shape)
    new_groups, losses, tokens = [], [], []
    for rows, pad, state in groups:
        rows = rows.to(x.device)
        y_group, state = mixer(x[rows, pad:], state=state, use_cache=cache_layer is not None)
        y = y.index_put((rows,), torch.nn.functional.pad(y_group, (0, 0, pad, 0)))
        new_groups.append(RowGroup(rows, state))
        if getattr(mixer, "commit_loss", None) is not None:
            losses.append(mixer.commit_loss)
            tokens.append(len(rows) * (t - pad))
    if losses:
        mixer.commit_loss = sum(loss * n for loss, n in zip(losses, tokens)) / sum(tokens)
    if cache_layer is not None:
        cache_layer.update(new_groups, t)
    return y
