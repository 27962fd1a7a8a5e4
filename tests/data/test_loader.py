"""Training windows (deterministic, resumable, rank-disjoint) and held-out documents."""

import json

import numpy as np
import pytest
import torch

from ovq.data.loader import HeldOutDocuments, TokenWindows
from ovq.data.shards import TokenShards


def take(it, n):
    return [next(it) for _ in range(n)]


def test_windows_are_slices_of_the_stream(sample_data):
    shards = TokenShards(sample_data, "train")
    stream = torch.from_numpy(shards.read(0, shards.num_tokens).astype(np.int64))
    it = TokenWindows(sample_data, 65, 3, seed=0)
    for batch in take(it, it.batches_per_epoch):
        assert batch.shape == (3, 65) and batch.dtype == torch.int64
        for row in batch:
            starts = [s for s in range(shards.num_tokens - 64) if torch.equal(stream[s:s + 65], row)]
            assert starts


def test_an_epoch_visits_distinct_windows_and_epochs_differ(sample_data):
    it = TokenWindows(sample_data, 50, 2, seed=0)
    n = it.batches_per_epoch
    starts0 = it._starts[:n * 2].tolist()
    phase = starts0[0] % 50
    assert len(set(starts0)) == len(starts0) and all(s % 50 == phase for s in starts0)
    assert n == (it.data.num_tokens - phase) // 50 // 2  # every whole window of the tiling, once
    take(it, n)
    assert it.epoch == 0 and it.batch == n
    next(it)
    assert it.epoch == 1 and it.batch == 1
    assert it._starts.tolist() != starts0


def test_deterministic_by_seed(sample_data):
    a = take(TokenWindows(sample_data, 33, 4, seed=5), 12)
    b = take(TokenWindows(sample_data, 33, 4, seed=5), 12)
    c = take(TokenWindows(sample_data, 33, 4, seed=6), 12)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("stop", [0, 3, 17, 40])
def test_resume_gives_the_same_next_batches(sample_data, stop):
    ref = TokenWindows(sample_data, 40, 4, seed=1)
    expected = take(ref, stop + 30)  # crosses at least one epoch boundary
    first = TokenWindows(sample_data, 40, 4, seed=1)
    take(first, stop)
    state = json.loads(json.dumps(first.state_dict()))  # survives a checkpoint file
    resumed = TokenWindows(sample_data, 40, 4, seed=1)
    resumed.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(take(resumed, 30), expected[stop:]))


def test_incompatible_state_is_refused(sample_data):
    it = TokenWindows(sample_data, 40, 4, seed=1)
    state = it.state_dict()
    with pytest.raises(ValueError, match="state was saved with seed=1, this loader has 2"):
        TokenWindows(sample_data, 40, 4, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="window_len"):
        TokenWindows(sample_data, 41, 4, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="missing"):
        it.load_state_dict({"epoch": 0})
    with pytest.raises(ValueError, match="exceeds"):
        it.load_state_dict(state | {"batch": 10**6})
    with pytest.raises(TypeError, match="state must be a dict"):
        it.load_state_dict([1])


def test_ranks_take_disjoint_windows(sample_data):
    ranks = [TokenWindows(sample_data, 30, 2, seed=0, rank=r, world_size=3) for r in range(3)]
    n = ranks[0].batches_per_epoch
    assert all(r.batches_per_epoch == n for r in ranks)
    starts = [set(r._starts[:2 * n].tolist()) for r in ranks]
    assert not (starts[0] & starts[1] or starts[0] & starts[2] or starts[1] & starts[2])


def test_bad_arguments(sample_data, tmp_path):
    with pytest.raises(ValueError, match="fewer than one global batch"):
        TokenWindows(sample_data, 4096, 8)
    with pytest.raises(ValueError, match="rank must be < world_size"):
        TokenWindows(sample_data, 16, 1, rank=2, world_size=2)
    with pytest.raises(TypeError, match="window_len must be an int"):
        TokenWindows(sample_data, 16.0, 1)
    with pytest.raises(FileNotFoundError, match="prepared data folder not found"):
        TokenWindows(tmp_path / "missing", 16, 1)
    with pytest.raises(TypeError, match="data must be a prepared-data folder"):
        TokenWindows(123, 16, 1)
    with pytest.raises(ValueError, match="expected 'heldout'"):
        HeldOutDocuments(TokenShards(sample_data, "train"))


def test_heldout_documents(sample_data):
    shards = TokenShards(sample_data, "heldout")
    docs = list(HeldOutDocuments(sample_data))
    assert [d for d, _ in docs] == shards.ids
    for i, (_, tokens) in enumerate(docs):
        assert tokens[0].item() == shards.eos_id
        assert torch.equal(tokens[1:], torch.from_numpy(shards.document(i).astype(np.int64)))
    shortest = int(shards.lengths.min())
    cut = list(HeldOutDocuments(sample_data, min_tokens=shortest + 2, max_tokens=100, add_bos=False))
    assert len(cut) == int((shards.lengths >= shortest + 2).sum()) < len(docs)
    assert all(len(t) == 100 for _, t in cut)
