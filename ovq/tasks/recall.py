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
from .common import (IGNORE_INDEX, KeyValueLayout, TokenBatch, TokenTask, make_generator, query_order,
                     random_block_starts, random_subset)


@dataclass
class RecallConfig(KeyValueLayout):
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
        self.check_layout(reserved=f"{self.num_filler_tokens} filler tokens (one key, one value)",
                          lower="num_pairs/num_queries")


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

