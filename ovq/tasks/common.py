"""What the task generators share: batch containers, seeded sampling helpers, scoring of token tasks.

Every generator draws all its randomness from one ``torch.Generator`` on the target device, with a fixed
sequence of calls, so a batch is a pure function of ``(config, batch_size, seed, device type)``. CPU and
CUDA generators produce different streams: the same seed gives the same batch on every CPU, and the same
batch on every CUDA device, but a CPU batch differs from a CUDA batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..ops.utils import check_int

IGNORE_INDEX = -100
"""Target of every position that is not scored in a token task (``F.cross_entropy``'s default)."""


@dataclass
class TokenBatch:
    """A batch of a token task.

    Attributes:
        inputs: ``[B, T]`` long, the token ids the model reads.
        targets: ``[B, T]`` long, the answer the model must predict *at* each position (not shifted:
            ``targets[:, t]`` is compared with the model's output at position ``t``), ``IGNORE_INDEX``
            where nothing is scored.
        mask: ``[B, T]`` bool, the scored (answer) positions: ``targets != IGNORE_INDEX``.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor

    @property
    def num_answers(self) -> int:
        return int(self.mask.sum())

    def to(self, device) -> "TokenBatch":
        return TokenBatch(self.inputs.to(device), self.targets.to(device), self.mask.to(device))


def key_value_tokens(start: int, vocab_size: int) -> tuple[range, range]:
    """Key ids and value ids: the two halves (keys first) of the ids from ``start`` to ``vocab_size``."""
    keys = range(start, start + (vocab_size - start) // 2)
    return keys, range(keys.stop, vocab_size)


class KeyValueLayout:
    """What the two recall configs share (each is a dataclass with ``vocab_size``, ``seq_len``, ``num_pairs``,
    ``num_queries`` and ``num_filler_tokens``): the vocabulary's filler ids, then any reserved ids, then keys
    and values as halves of the rest; a context ``[0, C)`` of items (a key with its value or values) in
    filler, then query groups of ``QUERY_LEN`` tokens filling ``[C, T)``; and the checks of that layout.

    A subclass sets ``QUERY_LEN``, ``ITEMS`` (what an item is called in errors) and ``reserved_ids`` (ids before
    the keys) and ``item_len`` (tokens per item) when they differ from a pair's.
    """

    QUERY_LEN: int = 2
    ITEMS: str = "pairs"

    @property
    def reserved_ids(self) -> int:
        """Ids before the keys: the filler (and, in positional recall, the ordinals)."""
        return self.num_filler_tokens

    @property
    def item_len(self) -> int:
        return 2

    @property
    def resolved_num_queries(self) -> int:
        """Q; ``num_queries=None`` (dense supervision) fills the last half with query groups."""
        return (self.seq_len // 2) // self.QUERY_LEN if self.num_queries is None else self.num_queries

    @property
    def context_len(self) -> int:
        """C: the context occupies ``[0, C)``, the queries ``[C, T)``."""
        return self.seq_len - self.QUERY_LEN * self.resolved_num_queries

    @property
    def filler_tokens(self) -> range:
        return range(0, self.num_filler_tokens)

    @property
    def key_tokens(self) -> range:
        return key_value_tokens(self.reserved_ids, self.vocab_size)[0]

    @property
    def value_tokens(self) -> range:
        return key_value_tokens(self.reserved_ids, self.vocab_size)[1]

    def check_layout(self, reserved: str, lower: str) -> None:
        """Raise a ValueError naming the field when the layout cannot be built. ``reserved`` describes the ids
        before the keys, ``lower`` the fields that shrink the context's items."""
        for name in ("vocab_size", "seq_len", "num_pairs", "num_filler_tokens"):
            check_int(name, getattr(self, name))
        if self.num_queries is not None:
            check_int("num_queries", self.num_queries)
        if self.vocab_size - self.reserved_ids < 2:
            raise ValueError(f"vocab_size ({self.vocab_size}) must leave at least 2 ids after the {reserved}")
        if self.num_pairs > len(self.key_tokens):
            raise ValueError(f"num_pairs ({self.num_pairs}) exceeds the {len(self.key_tokens)} key tokens "
                             f"(keys of a sequence are distinct)")
        if self.resolved_num_queries < 1:
            raise ValueError(f"seq_len ({self.seq_len}) is too short for a dense query half: need seq_len >= "
                             f"{2 * self.QUERY_LEN}")
        if self.item_len * self.num_pairs > self.context_len:
            raise ValueError(f"the context ({self.context_len} tokens = seq_len - {self.QUERY_LEN} * num_queries) "
                             f"cannot hold num_pairs={self.num_pairs} {self.ITEMS} of {self.item_len} tokens: "
                             f"raise seq_len or lower {lower}")


def make_generator(seed: int | None, generator: torch.Generator | None, device) -> tuple[torch.Generator, torch.device]:
    """The generator a ``sample`` call draws from: exactly one of ``seed`` and ``generator``."""
    if (seed is None) == (generator is None):
        raise ValueError("pass exactly one of seed and generator")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        gen_device = torch.device(generator.device)
        if device is not None and torch.device(device).type != gen_device.type:
            raise ValueError(f"device {device} does not match the generator's device {gen_device}")
        return generator, gen_device
    check_int("seed", seed, minimum=0)
    device = torch.device("cpu" if device is None else device)
    return torch.Generator(device=device).manual_seed(seed), device


def random_subset(population: int, size: int, batch_shape: tuple[int, ...], generator, device) -> torch.Tensor:
    """``[*batch_shape, size]`` distinct ints from ``[0, population)``, a uniformly random ordered subset.

    Uses ``topk`` of uniform noise, so it costs ``prod(batch_shape) * population`` numbers: meant for
    populations of at most a few hundred thousand.
    """
    noise = torch.rand(*batch_shape, population, generator=generator, device=device)
    return noise.topk(size, dim=-1, sorted=True).indices


def random_small_subset(population: int, size: int, batch_shape: tuple[int, ...], generator, device) -> torch.Tensor:
    """Like :func:`random_subset` for a small ``size`` out of a large population, in O(size²) tensor ops.

    Draw ``r`` is uniform over the ``population - r`` values not drawn yet: a uniform index ``u`` is
    moved past every earlier draw that is ``<= u`` (walking the earlier draws in ascending order).
    """
    draws = torch.empty(*batch_shape, 0, dtype=torch.long, device=device)
    ascending = draws
    for r in range(size):
        u = torch.randint(0, population - r, batch_shape, generator=generator, device=device)
        for j in range(r):
            u = u + (u >= ascending[..., j]).long()
        draws = torch.cat([draws, u.unsqueeze(-1)], dim=-1)
        ascending = draws.sort(dim=-1).values
    return draws


def random_block_starts(region_len: int, num_blocks: int, block_len: int, batch_size: int, generator, device
                        ) -> torch.Tensor:
    """``[B, num_blocks]`` ascending start positions of non-overlapping blocks inside ``[0, region_len)``.

    Uniform over all placements: each block is collapsed to one slot, ``num_blocks`` distinct slots are
    drawn out of ``region_len - num_blocks * (block_len - 1)``, sorted, and block ``i`` is shifted right by
    the ``i * (block_len - 1)`` tokens of the blocks before it.
    """
    slots = region_len - num_blocks * (block_len - 1)
    picks = random_subset(slots, num_blocks, (batch_size,), generator, device).sort(dim=-1).values
    return picks + torch.arange(num_blocks, device=device) * (block_len - 1)


def query_order(num_items: int, num_queries: int, batch_size: int, generator, device) -> torch.Tensor:
    """``[B, num_queries]`` indices into ``num_items`` items: rounds of random permutations, truncated.

    With ``num_queries <= num_items`` every query names a different item; beyond that each item is named
    once per round of ``num_items`` queries.
    """
    rounds = -(-num_queries // num_items)
    perms = torch.rand(batch_size, rounds, num_items, generator=generator, device=device).argsort(dim=-1)
    return perms.reshape(batch_size, rounds * num_items)[:, :num_queries]


# ----------------------------------------------------------------------------------------------
# Scoring of token tasks (exact match on answer positions only).
# ----------------------------------------------------------------------------------------------

def predicted_tokens(outputs: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    """``[B, T]`` predicted ids from logits ``[B, T, V]`` (argmax) or from ids ``[B, T]``."""
    if not isinstance(outputs, torch.Tensor):
        raise TypeError(f"outputs must be a torch.Tensor, got {type(outputs).__name__}")
    shape = tuple(batch.targets.shape)
    if outputs.dim() == 3 and tuple(outputs.shape[:2]) == shape:
        return outputs.argmax(dim=-1)
    if outputs.dim() == 2 and tuple(outputs.shape) == shape and not outputs.is_floating_point():
        return outputs
    raise ValueError(f"outputs must be logits [B, T, V] with [B, T] = {list(shape)} or integer token ids "
                     f"{list(shape)}, got {outputs.dtype} {list(outputs.shape)}")


def token_accuracy(outputs: torch.Tensor, batch: TokenBatch, reduction: str = "mean") -> torch.Tensor:
    """Exact-match accuracy over the answer positions (``batch.mask``) only.

    ``reduction="mean"``: one 0-dim tensor, correct answers / answers in the batch. ``"none"``: ``[B]``, the
    accuracy of each sequence. Nothing is synchronized with the host.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    correct = (predicted_tokens(outputs, batch) == batch.targets) & batch.mask
    if reduction == "mean":
        return correct.sum() / batch.mask.sum().clamp_min(1)
    return correct.sum(dim=1) / batch.mask.sum(dim=1).clamp_min(1)


def token_loss(logits: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    """Mean cross-entropy over the answer positions (float32 softmax whatever the logits' dtype)."""
    if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(batch.targets.shape):
        raise ValueError(f"logits must have shape [B, T, V] with [B, T] = {list(batch.targets.shape)}, "
                         f"got {list(logits.shape)}")
    return F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(), ignore_index=IGNORE_INDEX)


class Task:
    """What every task shares: a ``name`` and a config dataclass (``config_class``) built or checked here."""

    name: str
    config_class: type

    def __init__(self, config=None):
        if config is None:
            config = self.config_class()
        if not isinstance(config, self.config_class):
            raise TypeError(f"config must be a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    def training_sample(self, batch_size: int, *, seed: int, step: int, device=None):
        """Training batch number ``step`` (tasks with a curriculum override this; the rest ignore ``step``)."""
        return self.sample(batch_size, seed=seed, device=device)


class TokenTask(Task):
    """A task over token ids, scored on its answer positions only."""

    def loss(self, logits: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
        """Cross-entropy on the answer positions only."""
        return token_loss(logits, batch)

    def score(self, outputs: torch.Tensor, batch: TokenBatch, reduction: str = "mean") -> torch.Tensor:
        """Exact-match accuracy on the answer positions only (logits or predicted ids)."""
        return token_accuracy(outputs, batch, reduction)
