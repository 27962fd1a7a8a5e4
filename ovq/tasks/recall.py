"""Basic in-context recall (multi-query associative recall, after Zoology's MQAR).

Layout of one sequence of ``T = seq_len`` tokens (``docs/tasks.md`` has an example):

* context ``[0, C)`` with ``C = T - 2Q``: filler tokens, with ``P`` key→value pairs (two adjacent tokens
  ``key, value``) at uniformly random non-overlapping positions. The ``P`` keys of a sequence are distinct;
  values are drawn independently (they may repeat).
* queries ``[C, T)``: ``Q`` pairs ``key, value``, back to back. Query ``j`` puts a context key at
  ``C + 2j`` and that key's context value at ``C + 2j + 1``.
* answers: ``targets[C + 2j]`` is the value (the token that comes next); nothing else is scored.

``num_queries=None`` (dense supervision, for training) fills the last half: ``Q = T // 4``. An integer ``Q``
gives ``Q`` queries at the very end (``Q = P``: each key asked once, every answer must come from the
context; this is the clean evaluation). Queries name keys in rounds of random permutations, so with
``Q <= P`` no key is asked twice; with ``Q > P`` a key asked again can also be copied from its earlier
query pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops.utils import check_int
from .common import (IGNORE_INDEX, TokenBatch, key_value_tokens, make_generator, query_order, random_block_starts, random_subset,
                     TokenTask)


@dataclass
class RecallConfig:
    """Basic recall. Vocabulary ``[0, vocab_size)`` = filler ``[0, F)``, then keys, then values (halves of the rest).

    Args:
        vocab_size: total number of token ids (8,192 in the paper's setting).
        seq_len: T, tokens per sequence.
        num_pairs: P, key→value pairs in the context (independent of T).
        num_queries: Q query pairs at the end; ``None`` fills the last half (``Q = T // 4``).
        num_filler_tokens: F, size of the filler vocabulary.
    """

    vocab_size: int = 8192
    seq_len: int = 4096
    num_pairs: int = 64
    num_queries: int | None = None
    num_filler_tokens: int = 64

    def __post_init__(self):
        check_int("vocab_size", self.vocab_size)
        check_int("seq_len", self.seq_len)
        check_int("num_pairs", self.num_pairs)
        check_int("num_filler_tokens", self.num_filler_tokens)
        if self.num_queries is not None:
            check_int("num_queries", self.num_queries)
        if self.vocab_size - self.num_filler_tokens < 2:
            raise ValueError(f"vocab_size ({self.vocab_size}) must leave at least 2 ids after the "
                             f"{self.num_filler_tokens} filler tokens (one key, one value)")
        if self.num_pairs > len(self.key_tokens):
            raise ValueError(f"num_pairs ({self.num_pairs}) exceeds the {len(self.key_tokens)} key tokens "
                             f"(keys of a sequence are distinct)")
        if self.resolved_num_queries < 1:
            raise ValueError(f"seq_len ({self.seq_len}) is too short for a dense query half: need seq_len >= 4")
        if 2 * self.num_pairs > self.context_len:
            raise ValueError(f"the context ({self.context_len} tokens = seq_len - 2 * num_queries) cannot hold "
                             f"num_pairs={self.num_pairs} pairs of 2 tokens: raise seq_len or lower "
                             f"num_pairs/num_queries")

    @property
    def resolved_num_queries(self) -> int:
        return self.seq_len // 4 if self.num_queries is None else self.num_queries

    @property
    def context_len(self) -> int:
        """C: the context occupies ``[0, C)``, the queries ``[C, T)``."""
        return self.seq_len - 2 * self.resolved_num_queries

    @property
    def filler_tokens(self) -> range:
        return range(0, self.num_filler_tokens)

    @property
    def key_tokens(self) -> range:
        return key_value_tokens(self.num_filler_tokens, self.vocab_size)[0]

    @property
    def value_tokens(self) -> range:
        return key_value_tokens(self.num_filler_tokens, self.vocab_size)[1]


class RecallTask(TokenTask):
    """Generator and scoring of basic in-context recall (see the module docstring for the layout)."""

    name = "recall"
    config_class = RecallConfig

    def sample(self, batch_size: int, *, seed: int | None = None, generator: torch.Generator | None = None,
               device=None) -> TokenBatch:
        """A batch of ``batch_size`` sequences, all drawn on ``device`` from ``seed`` (or ``generator``)."""
        check_int("batch_size", batch_size)
        gen, device = make_generator(seed, generator, device)
        cfg = self.config
        B, T, P, Q, C = batch_size, cfg.seq_len, cfg.num_pairs, cfg.resolved_num_queries, cfg.context_len
        keys = cfg.key_tokens.start + random_subset(len(cfg.key_tokens), P, (B,), gen, device)
        values = torch.randint(cfg.value_tokens.start, cfg.value_tokens.stop, (B, P), generator=gen, device=device)
        starts = random_block_starts(C, P, 2, B, gen, device)
        asked = query_order(P, Q, B, gen, device)
        inputs = torch.randint(0, cfg.num_filler_tokens, (B, T), generator=gen, device=device)

        inputs.scatter_(1, starts, keys)
        inputs.scatter_(1, starts + 1, values)
        query_keys, answers = keys.gather(1, asked), values.gather(1, asked)
        inputs[:, C::2] = query_keys
        inputs[:, C + 1::2] = answers
        targets = torch.full_like(inputs, IGNORE_INDEX)
        targets[:, C::2] = answers
        return TokenBatch(inputs, targets, targets != IGNORE_INDEX)

