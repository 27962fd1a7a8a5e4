"""Loaders over prepared shards: shuffled fixed-length training windows (resumable) and whole
held-out documents for loss-by-position evaluation.

Training windows tile the split's token stream (documents back to back, ``<|endoftext|>`` between
them). Each epoch shifts the tiling by a random phase and visits the windows in a random order, both
drawn from ``(seed, epoch)``; so the position in the data is just ``(epoch, batch)``, and
:meth:`TokenWindows.state_dict` / :meth:`TokenWindows.load_state_dict` resume exactly.
With ``world_size > 1`` each rank takes every ``world_size``-th window of the same order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .shards import TokenShards

STATE_VERSION = 1


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _open(data, split: str) -> TokenShards:
    if isinstance(data, TokenShards):
        if data.split != split:
            raise ValueError(f"data is the {data.split!r} split, expected {split!r}")
        return data
    if isinstance(data, (str, os.PathLike)):
        return TokenShards(Path(data), split)
    raise TypeError(f"data must be a prepared-data folder or a TokenShards, got {type(data).__name__}")


class TokenWindows:
    """An endless iterator of ``[batch_size, window_len]`` int64 batches of training windows.

    ``window_len``: tokens per row. For next-token training with inputs ``x[:, :-1]`` and targets
    ``x[:, 1:]`` ask for ``seq_len + 1``. Epochs roll over by themselves; ``epoch`` and ``batch`` say
    where the next batch comes from. Deterministic given (data, seed, window_len, batch_size, rank,
    world_size); ``state_dict()`` is a small dict of ints that the trainer saves with its checkpoint.
    """

    def __init__(self, data, window_len: int, batch_size: int, *, split: str = "train", seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.data = _open(data, split)
        self.window_len = _check_int("window_len", window_len, 2)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.seed = _check_int("seed", seed, 0)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be < world_size={self.world_size}, got {self.rank}")
        need = self.window_len * self.batch_size * self.world_size
        if self.data.num_tokens < need:
            raise ValueError(f"the {split!r} split has {self.data.num_tokens:,} tokens, fewer than one global "
                             f"batch needs (window_len {self.window_len} x batch_size {self.batch_size} x "
                             f"world_size {self.world_size} = {need:,})")
        self.epoch = 0
        self.batch = 0
        self._plan_epoch = None
        self._plan()

    # --- the epoch plan: a phase and an order of windows, both from (seed, epoch) -----------------
    def _plan(self) -> None:
        if self._plan_epoch == self.epoch:
            return
        rng = np.random.default_rng([self.seed, self.epoch])
        n_tokens, w = self.data.num_tokens, self.window_len
        slack = n_tokens - w * self.batch_size * self.world_size
        phase = int(rng.integers(0, min(w - 1, slack) + 1))
        n_windows = (n_tokens - phase) // w
        order = rng.permutation(n_windows)
        per_rank = n_windows // self.world_size
        self._starts = phase + w * order[self.rank::self.world_size][:per_rank].astype(np.int64)
        self.batches_per_epoch = per_rank // self.batch_size
        self._plan_epoch = self.epoch

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        self._plan()
        if self.batch >= self.batches_per_epoch:
            self.epoch += 1
            self.batch = 0
            self._plan()
        starts = self._starts[self.batch * self.batch_size:(self.batch + 1) * self.batch_size]
        rows = np.stack([self.data.read(int(s), self.window_len) for s in starts])
        self.batch += 1
        return torch.from_numpy(rows.astype(np.int64))

    # --- resumable position ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "epoch": self.epoch, "batch": self.batch, "seed": self.seed,
                "window_len": self.window_len, "batch_size": self.batch_size, "rank": self.rank,
                "world_size": self.world_size, "num_tokens": self.data.num_tokens}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position. The data and settings must be those the state was saved with."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        missing = {"version", "epoch", "batch", "seed", "window_len", "batch_size", "world_size",
                   "num_tokens"} - set(state)
        if missing:
            raise ValueError(f"state is missing {sorted(missing)}")
        if state["version"] != STATE_VERSION:
            raise ValueError(f"state version {state['version']!r} is not {STATE_VERSION}")
        mine = self.state_dict()
        for key in ("seed", "window_len", "batch_size", "world_size", "num_tokens"):
            if state[key] != mine[key]:
                raise ValueError(f"state was saved with {key}={state[key]!r}, this loader has {mine[key]!r}")
        self.epoch = _check_int("state['epoch']", state["epoch"], 0)
        batch = _check_int("state['batch']", state["batch"], 0)
        self._plan()
        if batch > self.batches_per_epoch:
            raise ValueError(f"state['batch']={batch} exceeds the {self.batches_per_epoch} batches of an epoch")
        self.batch = batch


class HeldOutDocuments:
    """Whole held-out documents, in index order, for loss by position.

    Yields ``(doc_id, tokens)`` with ``tokens`` a 1-D int64 tensor: ``<|endoftext|>`` first (when
    ``add_bos``: the context a document starts with in training), then the document, cut to
    ``max_tokens`` in all. Only documents with at least ``min_tokens`` tokens (BOS included) are
    yielded: ``min_tokens = max_tokens = 65537`` gives exactly the documents that cover 64K positions.
    """

    def __init__(self, data, *, split: str = "heldout", min_tokens: int = 1, max_tokens: int | None = None,
                 add_bos: bool = True):
        self.data = _open(data, split)
        self.min_tokens = _check_int("min_tokens", min_tokens, 1)
        self.max_tokens = None if max_tokens is None else _check_int("max_tokens", max_tokens, 1)
        if not isinstance(add_bos, bool):
            raise TypeError(f"add_bos must be a bool, got {type(add_bos).__name__}")
        self.add_bos = add_bos
        lengths = self.data.lengths + int(add_bos)
        self.rows = [int(i) for i in np.flatnonzero(lengths >= self.min_tokens)]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for i in self.rows:
            tokens = np.asarray(self.data.document(i), dtype=np.int64)
            if self.add_bos:
                tokens = np.concatenate([[self.data.eos_id], tokens])
            if self.max_tokens is not None:
                tokens = tokens[:self.max_tokens]
            yield self.data.ids[i], torch.from_numpy(tokens)
