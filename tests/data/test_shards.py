"""Token shards: exact documents and stream, and clear errors for damaged files."""

import json
import re

import numpy as np
import pytest

from ovq.data.shards import ShardWriter, TokenShards, load_meta


def test_writer_and_reader_agree(sample_data):
    shards = TokenShards(sample_data, "train", verify=True)
    meta = load_meta(sample_data)
    assert len(meta["splits"]["train"]["shards"]) >= 2  # shard_tokens=2000 forces several
    assert shards.num_documents == meta["splits"]["train"]["documents"] == len(shards.ids)
    assert int(shards.lengths.sum()) == meta["splits"]["train"]["tokens"]
    stream = np.concatenate(shards.shards)
    assert shards.num_tokens == len(stream) == meta["splits"]["train"]["stream_tokens"]
    # The stream is the documents back to back, each followed by <|endoftext|>.
    expected = np.concatenate([np.append(shards.document(i), shards.eos_id) for i in range(len(shards))])
    assert np.array_equal(stream, expected)
    for start, n in [(0, 10), (1990, 50), (shards.num_tokens - 7, 7), (5, 0)]:  # across shard boundaries too
        assert np.array_equal(shards.read(start, n), stream[start:start + n])
    with pytest.raises(IndexError):
        shards.read(shards.num_tokens - 3, 4)
    with pytest.raises(IndexError):
        shards.document(len(shards))


def test_writer_rejects_bad_input(tmp_path):
    w = ShardWriter(tmp_path / "train", np.uint16, eos_id=0)
    with pytest.raises(ValueError, match="out of range for uint16"):
        w.add(np.array([70000]))
    with pytest.raises(ValueError, match="1-D"):
        w.add(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="max_shard_tokens"):
        ShardWriter(tmp_path / "x", np.uint16, 0, max_shard_tokens=1)


@pytest.fixture
def copy(sample_data, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(sample_data, dst)
    return dst


def _shard(root, k=0):
    return root / json.loads((root / "meta.json").read_text())["splits"]["train"]["shards"][k]["file"]


def test_missing_and_corrupt_meta(copy, tmp_path):
    with pytest.raises(FileNotFoundError, match="prepared data folder not found"):
        TokenShards(tmp_path / "nothing")
    (copy / "meta.json").write_text('{"format": "ovq.data/1", "splits": ')
    with pytest.raises(ValueError, match=re.escape(f"corrupt prepared-data metadata {copy / 'meta.json'}")):
        TokenShards(copy)
    (copy / "meta.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="format is 'something else'"):
        TokenShards(copy)
    (copy / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match="prepared-data metadata not found"):
        TokenShards(copy)


def test_bad_split_name(sample_data):
    with pytest.raises(ValueError, match=r"split must be one of \['heldout', 'train'\].*got 'test'"):
        TokenShards(sample_data, "test")


def test_truncated_shard(copy):
    path = _shard(copy)
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ValueError, match=re.escape(f"token shard {path} has")):
        TokenShards(copy)


def test_missing_shard(copy):
    _shard(copy, 1).unlink()
    with pytest.raises(FileNotFoundError, match="token shard not found"):
        TokenShards(copy)


def test_altered_shard_fails_verification(copy):
    path = _shard(copy)
    data = bytearray(path.read_bytes())
    data[10] ^= 0x01  # a token id changes; sizes and separators stay valid
    path.write_bytes(bytes(data))
    TokenShards(copy)  # the cheap checks cannot see it
    with pytest.raises(ValueError, match="fails its sha256 check"):
        TokenShards(copy, verify=True)


def test_overwritten_separator(copy):
    shards = TokenShards(copy)
    shard, start, length = (int(x) for x in shards.index[0])
    path = _shard(copy, shard)
    data = np.fromfile(path, dtype=shards.dtype)
    data[start + length] = 7
    data.tofile(path)
    with pytest.raises(ValueError, match="document 0 .* not followed by the <|endoftext|> separator"):
        TokenShards(copy)


def test_corrupt_index(copy):
    index_path = copy / "train" / "index.npy"
    index_path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt document index"):
        TokenShards(copy)
    np.save(index_path, np.array([[0, 0, 10**9]], dtype=np.int64))
    with pytest.raises(ValueError, match="runs past the end of its shard"):
        TokenShards(copy)
    index_path.unlink()
    with pytest.raises(FileNotFoundError, match="document index not found"):
        TokenShards(copy)
