"""Split by whole documents and groups, deterministic by seed, with long held-out documents."""

import pytest

from ovq.data.split import SplitConfig, split_documents


def records():
    recs = [{"id": f"long{i}", "group": "", "chars": 400_000 + i} for i in range(6)]
    recs += [{"id": f"short{i}", "group": "", "chars": 50_000} for i in range(40)]
    recs += [{"id": f"work/ed{i}", "group": "work", "chars": 60_000} for i in range(3)]
    recs += [{"id": "bible", "group": "", "chars": 3_000_000}]
    return recs


def test_deterministic_by_seed_and_complete():
    cfg = SplitConfig(heldout_long_docs=3, heldout_fraction=0.1, long_doc_chars=300_000, max_heldout_share=0.3)
    a = split_documents(records(), cfg)
    assert a == split_documents(records(), cfg)
    assert set(a) == {r["id"] for r in records()} and set(a.values()) == {"train", "heldout"}
    others = [split_documents(records(), SplitConfig(**{**cfg.to_dict(), "seed": s})) for s in range(1, 6)]
    assert any(o != a for o in others)


def test_long_documents_budget_and_groups():
    recs = records()
    total = sum(r["chars"] for r in recs)
    for seed in range(10):
        cfg = SplitConfig(heldout_long_docs=3, heldout_fraction=0.1, long_doc_chars=300_000,
                          max_heldout_share=0.3, seed=seed)
        a = split_documents(recs, cfg)
        held = [r for r in recs if a[r["id"]] == "heldout"]
        assert sum(r["chars"] >= 300_000 for r in held) >= 3
        assert sum(r["chars"] for r in held) <= 0.3 * total
        assert a["bible"] == "train"  # 3M chars would break the budget
        assert len({a[f"work/ed{i}"] for i in range(3)}) == 1  # a group never straddles the split


def test_fixed_splits_are_kept():
    recs = [{"id": "a", "chars": 10, "split": "heldout"}, {"id": "b", "chars": 10, "split": "train"},
            {"id": "c", "chars": 10, "split": None}]
    a = split_documents(recs, SplitConfig(heldout_long_docs=0, heldout_fraction=0.0))
    assert a == {"a": "heldout", "b": "train", "c": "train"}


def test_errors():
    with pytest.raises(ValueError, match="no documents"):
        split_documents([])
    with pytest.raises(ValueError, match="unique"):
        split_documents([{"id": "a", "chars": 1}, {"id": "a", "chars": 2}], SplitConfig(heldout_long_docs=0))
    with pytest.raises(ValueError, match="could hold out only 0 of heldout_long_docs=2"):
        split_documents([{"id": "a", "chars": 10}, {"id": "b", "chars": 10}], SplitConfig(heldout_long_docs=2))
    with pytest.raises(ValueError, match="no documents for training"):
        split_documents([{"id": "a", "chars": 10, "split": "heldout"}], SplitConfig(heldout_long_docs=0))
    with pytest.raises(ValueError, match="split must be one of"):
        split_documents([{"id": "a", "chars": 10, "split": "test"}], SplitConfig(heldout_long_docs=0))
    with pytest.raises(ValueError, match="heldout_fraction must be a number in"):
        SplitConfig(heldout_fraction=1.5)
    with pytest.raises(ValueError, match="heldout_long_docs must be an int"):
        SplitConfig(heldout_long_docs=-1)
