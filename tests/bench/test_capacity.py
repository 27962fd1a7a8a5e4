"""The capacity probe (``ovq.bench.capacity``): planted items keep a centroid when the budget allows it."""

import pytest
import torch

from ovq.bench.capacity import item_shares, synthetic_keys


def _shares(length, n, seed=0):
    keys, positions, dirs = synthetic_keys(2, length, 16, 4, 8, 0.5, torch.Generator().manual_seed(seed))
    return item_shares(keys, positions, dirs, n, chunk_size=8)


def test_items_are_alone_while_the_dictionary_grows_with_the_sequence():
    # N far above the length: M(t) ~ t, so nearly every token founds a centroid and items stay alone.
    share = _shares(256, 100_000)
    assert share.shape == (2, 4)
    assert torch.all(share == 1.0)


def test_a_tiny_budget_merges_items():
    # Two centroids for 256 tokens of 8 filler directions: every item shares its centroid with filler.
    share = _shares(256, 2)
    assert torch.all(share < 0.5)
    assert torch.all((share >= 0) & (share <= 1))


def test_the_share_falls_with_the_budget_at_a_fixed_length():
    shares = [_shares(1024, n, seed=1).mean().item() for n in (4, 32, 4096)]
    assert shares[0] < shares[1] <= shares[2] == 1.0


def test_records_place_their_items_two_tokens_apart():
    keys, positions, dirs = synthetic_keys(3, 256, 16, 6, 8, 0.5, torch.Generator().manual_seed(0), items_per_record=2)
    assert positions.shape == (3, 6)
    assert torch.all(positions[:, 1::2] - positions[:, 0::2] == 2)           # k v1 k v2: occurrences 2 apart
    assert torch.all(positions[:, 2::2] - positions[:, 1:-1:2] >= 2)          # records do not overlap
    torch.testing.assert_close(keys.gather(1, positions[..., None].expand(-1, -1, 16)), dirs)
    with pytest.raises(ValueError, match="whole records"):
        synthetic_keys(1, 256, 16, 5, 8, 0.5, torch.Generator().manual_seed(0), items_per_record=2)


def test_bad_arguments_are_named():
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="num_items"):
        synthetic_keys(1, 8, 4, 9, 2, 0.5, gen)
    with pytest.raises(ValueError, match="noise"):
        synthetic_keys(1, 64, 4, 2, 2, -1.0, gen)
    with pytest.raises(ValueError, match="dim"):
        synthetic_keys(1, 64, 0, 2, 2, 0.5, gen)
    keys, positions, dirs = synthetic_keys(1, 64, 4, 2, 2, 0.5, gen)
    with pytest.raises(ValueError, match="chunk_size"):
        item_shares(keys, positions, dirs, 8, chunk_size=5)
    with pytest.raises(ValueError, match="max_centroids"):
        item_shares(keys, positions, dirs, 0, chunk_size=8)


def test_linear_growth_at_rate_one_keeps_every_item_alone():
    # M(t) = t (N >= T): every token founds its own centroid, so OVQ is attention and nothing merges.
    keys, positions, dirs = synthetic_keys(2, 256, 16, 4, 8, 0.5, torch.Generator().manual_seed(0))
    share = item_shares(keys, positions, dirs, 256, chunk_size=8, growth="linear", growth_rate=1.0)
    assert torch.all(share == 1.0)
    # a rate that opens nothing before the last chunk leaves every item merged into filler
    share = item_shares(keys, positions, dirs, 256, chunk_size=8, growth="linear", growth_rate=1 / 256)
    assert torch.all(share < 1.0)


def test_cli_rejects_a_bad_growth_rate(tmp_path):
    from ovq.bench.capacity import main
    with pytest.raises(SystemExit):
        main(["--growth", "linear", "--growth-rate", "0", "--out", str(tmp_path / "x.json")])
