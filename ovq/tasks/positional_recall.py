"""Positional in-context recall: each key occurs several times, and the query names which occurrence.

Layout of one sequence of ``T = seq_len`` tokens, with ``R = num_occurrences`` (``docs/tasks.md`` has an
example and the reasons for this design):

* context ``[0, C)`` with ``C = T - 3Q``: filler tokens, with ``P`` records at uniformly random
  non-overlapping positions. The record of key ``k`` is ``2R`` adjacent tokens
  ``k v_1 k v_2 ... k v_R``: the key occurs ``R`` times, its ``r``-th occurrence followed by ``v_r``. The
  ``P`` keys of a sequence are distinct, and so are the ``R`` values of one record, so only the
  occurrence's place tells which value is asked for (a model that ignores it is right 1 time in R).
* queries ``[C, T)``: ``Q`` triples ``o_r, k, v_r`` back to back, where ``o_r`` is the ordinal token
  "r-th occurrence" (ordinals appear nowhere else). Query ``j`` occupies ``C + 3j .. C + 3j + 2``.
* answers: ``targets[C + 3j + 1] = v_r`` (at the key, the value comes next); nothing else is scored.

``num_queries=None`` (dense, for training) fills the last half: ``Q = (T // 2) // 3``. Queries name
(key, ordinal) combinations in rounds of random permutations of all ``P·R`` of them: with
``Q <= P·R`` no combination is asked twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops.utils import check_int
from .common import (IGNORE_INDEX, KeyValueLayout, TokenBatch, TokenTask, make_generator, query_order,
                     random_block_starts, random_small_subset, random_subset)


@dataclass
class PositionalRecallConfig(KeyValueLayout):
    """Positional recall. Vocabulary = filler ``[0, F)``, ordinals ``[F, F+R)``, then keys and values (halves of
    the rest).

    Args:
        vocab_size: total number of token ids.
        seq_len: T, tokens per sequence.
        num_pairs: P, keys in the context (each with a record of R occurrences).
        num_occurrences: R, occurrences of each key (and ordinal tokens).
        num_queries: Q query triples at the end; ``None`` fills the last half (``Q = (T // 2) // 3``).
        num_filler_tokens: F, size of the filler vocabulary.
    """

    QUERY_LEN = 3  # ordinal, key, value
    ITEMS = "records"

    vocab_size: int = 8192
    seq_len: int = 4096
    num_pairs: int = 32
    num_occurrences: int = 2
    num_queries: int | None = None
    num_filler_tokens: int = 64

    def __post_init__(self):
        check_int("num_occurrences", self.num_occurrences)
        self.check_layout(reserved=f"{self.num_filler_tokens} filler and {self.num_occurrences} ordinal tokens",
                          lower="num_pairs/num_occurrences/num_queries")
        if self.num_occurrences > len(self.value_tokens):
            raise ValueError(f"num_occurrences ({self.num_occurrences}) exceeds the {len(self.value_tokens)} "
                             f"value tokens (the values of one record are distinct)")

    @property
    def reserved_ids(self) -> int:
        return self.ordinal_tokens.stop

    @property
    def item_len(self) -> int:
        """A record: ``k v_1 k v_2 ...``."""
        return 2 * self.num_occurrences

    @property
    def ordinal_tokens(self) -> range:
        """``ordinal_tokens[r - 1]`` means "the r-th occurrence"."""
        return range(self.num_filler_tokens, self.num_filler_tokens + self.num_occurrences)


class PositionalRecallTask(TokenTask):
    """Generator and scoring of positional in-context recall (see the module docstring for the layout)."""

    name = "positional_recall"
    config_class = PositionalRecallConfig

    def sample(self, batch_size: int, *, seed: int | None = None, generator: torch.Generator | None = None,
               device=None) -> TokenBatch:
        """A batch of ``batch_size`` sequences, all drawn on ``device`` from ``seed`` (or ``generator``)."""
        check_int("batch_size", batch_size)
        gen, device = make_generator(seed, generator, device)
        cfg = self.config
        B, T, P, R = batch_size, cfg.seq_len, cfg.num_pairs, cfg.num_occurrences
        Q, C = cfg.resolved_num_queries, cfg.context_len
        keys = cfg.key_tokens.start + random_subset(len(cfg.key_tokens), P, (B,), gen, device)           # [B, P]
        values = cfg.value_tokens.start + random_small_subset(len(cfg.value_tokens), R, (B, P), gen, device)  # [B, P, R]
        starts = random_block_starts(C, P, cfg.item_len, B, gen, device)                                # [B, P]
        asked = query_order(P * R, Q, B, gen, device)                                                     # [B, Q]
        inputs = torch.randint(0, cfg.num_filler_tokens, (B, T), generator=gen, device=device)

        offsets = torch.arange(cfg.item_len, device=device)                          # record: k v_1 k v_2 ...
        record_positions = (starts.unsqueeze(-1) + offsets).flatten(1)                 # [B, P * 2R]
        record_tokens = torch.stack([keys.unsqueeze(-1).expand(B, P, R), values], dim=-1).flatten(1)
        inputs.scatter_(1, record_positions, record_tokens)

        asked_key, asked_rank = asked // R, asked % R                                  # rank r - 1 in [0, R)
        answers = values.flatten(1).gather(1, asked)                                   # values[b, key, rank]
        inputs[:, C::3] = cfg.ordinal_tokens.start + asked_rank
        inputs[:, C + 1::3] = keys.gather(1, asked_key)
        inputs[:, C + 2::3] = answers
        targets = torch.full_like(inputs, IGNORE_INDEX)
        targets[:, C + 1::3] = answers
        return TokenBatch(inputs, targets, targets != IGNORE_INDEX)

