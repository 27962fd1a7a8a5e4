"""Train / held-out split by whole documents (whole groups), deterministic by seed.

The held-out split must support loss-by-position evaluation out to 64K tokens, so it is guaranteed
``heldout_long_docs`` documents long enough for that. Token counts are unknown before the tokenizer
exists (the tokenizer is trained on the training split), so "long" is judged by characters here
(``long_doc_chars``, conservatively ~4.5 chars per token for 64K tokens) and checked in tokens after
tokenizing (see ovq.data.prepare).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class SplitConfig:
    """How documents are divided.

    heldout_long_docs: long documents (>= ``long_doc_chars`` chars) to hold out, picked at random.
    heldout_fraction: the fraction of the remaining groups (documents) also held out.
    max_heldout_share: held-out text may not exceed this share of all characters (a 4M-char Bible
        is skipped as a held-out pick rather than taken out of training).
    seed: the random picks.
    """

    heldout_long_docs: int = 5
    heldout_fraction: float = 0.05
    long_doc_chars: int = 294_912  # 4.5 chars/token x 65,536 tokens
    max_heldout_share: float = 0.2
    seed: int = 0

    def __post_init__(self):
        for name in ("heldout_long_docs", "long_doc_chars", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        for name in ("heldout_fraction", "max_heldout_share"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def split_documents(records: list[dict], config: SplitConfig = SplitConfig()) -> dict[str, str]:
    """Assign each document ("id", "group", "chars", optional fixed "split") to "train" or "heldout".

    Documents whose source fixed their split keep it. The others are split by group: first
    ``heldout_long_docs`` long documents (their whole groups) are drawn at random, skipping any group
    that would push held-out text over ``max_heldout_share``; then ``round(heldout_fraction * n)`` of
    the n remaining groups. Raises ValueError if the long documents cannot be found or nothing is left
    for training. Returns {id: split}.
    """
    if not records:
        raise ValueError("no documents to split")
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"document ids must be unique; repeated: {dup}")
    assignment: dict[str, str] = {}
    groups: dict[str, list[dict]] = {}
    for r in records:
        fixed = r.get("split")
        if fixed is not None:
            if fixed not in SPLITS:
                raise ValueError(f"document {r['id']}: split must be one of {SPLITS}, got {fixed!r}")
            assignment[r["id"]] = fixed
        else:
            groups.setdefault(r.get("group") or r["id"], []).append(r)

    total_chars = sum(r["chars"] for r in records)
    budget = config.max_heldout_share * total_chars
    heldout_chars = sum(r["chars"] for r in records if assignment.get(r["id"]) == "heldout")
    rng = np.random.default_rng(config.seed)
    keys = sorted(groups)
    chosen: list[str] = []

    def group_chars(key):
        return sum(r["chars"] for r in groups[key])

    def long_count(key):
        return sum(r["chars"] >= config.long_doc_chars for r in groups[key])

    # 1. Long documents, for loss by position.
    long_keys = [k for k in keys if long_count(k)]
    n_long = 0
    for i in rng.permutation(len(long_keys)):
        if n_long >= config.heldout_long_docs:
            break
        key = long_keys[i]
        if heldout_chars + group_chars(key) > budget:
            continue
        chosen.append(key)
        heldout_chars += group_chars(key)
        n_long += long_count(key)
    if n_long < config.heldout_long_docs:
        raise ValueError(
            f"could hold out only {n_long} of heldout_long_docs={config.heldout_long_docs} documents of "
            f">= long_doc_chars={config.long_doc_chars:,} chars ({sum(map(long_count, long_keys))} such "
            f"documents exist, held-out text capped at max_heldout_share={config.max_heldout_share}); "
            f"lower heldout_long_docs or long_doc_chars, or raise max_heldout_share")

    # 2. A fraction of the other groups.
    long_chosen = set(chosen)
    rest = [k for k in keys if k not in long_chosen]
    n_rest = int(round(config.heldout_fraction * len(rest)))
    picked = 0
    for i in rng.permutation(len(rest)):
        if picked >= n_rest:
            break
        key = rest[i]
        if heldout_chars + group_chars(key) > budget:
            continue
        chosen.append(key)
        heldout_chars += group_chars(key)
        picked += 1

    chosen_set = set(chosen)
    for key in keys:
        for r in groups[key]:
            assignment[r["id"]] = "heldout" if key in chosen_set else "train"
    if not any(s == "train" for s in assignment.values()):
        raise ValueError("the split left no documents for training")
    return assignment
