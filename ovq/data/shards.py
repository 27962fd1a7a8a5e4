"""Token shards on disk: flat memory-mapped token arrays plus an index of where each document lies.

A prepared split ``<root>/<split>/`` holds

- ``tokens-00000.bin``, ``tokens-00001.bin``, ...: raw little-endian token ids (uint16 when the
  vocabulary fits, else uint32). Each document is stored whole, followed by one ``<|endoftext|>``
  separator; a document never spans two shards.
- ``index.npy``: int64 ``[num_documents, 3]``: (shard, start, length) of each document, length
  without the separator.

``<root>/meta.json`` describes every file (tokens, bytes, sha256), so a truncated or altered shard is
caught when it is opened (sizes, separators, index bounds) or verified (checksums, token range).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..io import fsync_dir, read_json

FORMAT = "ovq.data/1"
DEFAULT_SHARD_TOKENS = 1 << 28  # 512 MiB of uint16 per shard file


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ShardWriter:
    """Appends documents to ``directory/tokens-NNNNN.bin`` files and records the index.

    ``close()`` fsyncs everything and returns the split's description for meta.json. Files are written
    inside the temporary folder that prepare renames into place at the end, so no partial split is
    ever visible under the final name.
    """

    def __init__(self, directory: str | os.PathLike, dtype: np.dtype, eos_id: int,
                 max_shard_tokens: int = DEFAULT_SHARD_TOKENS):
        if isinstance(max_shard_tokens, bool) or not isinstance(max_shard_tokens, int) or max_shard_tokens < 2:
            raise ValueError(f"max_shard_tokens must be an int >= 2, got {max_shard_tokens!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.dtype, self.eos_id, self.max_shard_tokens = np.dtype(dtype), int(eos_id), max_shard_tokens
        self.rows: list[tuple[int, int, int]] = []
        self.shards: list[dict] = []
        self._file = None
        self._hash = None
        self._tokens = 0

    def _open_next(self) -> None:
        self._finish_shard()
        name = f"tokens-{len(self.shards):05d}.bin"
        self._file = open(self.directory / name, "wb")
        self._hash = hashlib.sha256()
        self._tokens = 0
        self.shards.append({"file": f"{self.directory.name}/{name}"})

    def _finish_shard(self) -> None:
        if self._file is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self.shards[-1].update(tokens=self._tokens, bytes=self._tokens * self.dtype.itemsize,
                               sha256=self._hash.hexdigest())
        self._file = None

    def add(self, tokens: np.ndarray) -> int:
        """Append one document (a 1-D array of ids); returns its row in the index."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
        if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(self.dtype).max):
            raise ValueError(f"token ids out of range for {self.dtype}")
        n = int(tokens.size)
        if self._file is None or (self._tokens and self._tokens + n + 1 > self.max_shard_tokens):
            self._open_next()
        data = np.empty(n + 1, dtype=self.dtype)
        data[:n] = tokens
        data[n] = self.eos_id
        buf = data.tobytes()
        self._file.write(buf)
        self._hash.update(buf)
        self.rows.append((len(self.shards) - 1, self._tokens, n))
        self._tokens += n + 1
        return len(self.rows) - 1

    def close(self) -> dict:
        self._finish_shard()
        index = np.asarray(self.rows, dtype=np.int64).reshape(-1, 3)
        index_path = self.directory / "index.npy"
        with open(index_path, "wb") as f:
            np.save(f, index)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(self.directory)
        lengths = index[:, 2]
        return {"documents": int(len(index)), "tokens": int(lengths.sum()),
                "stream_tokens": int(sum(s["tokens"] for s in self.shards)),
                "shards": self.shards,
                "index": {"file": f"{self.directory.name}/index.npy", "sha256": sha256_file(index_path)}}


def load_meta(root: str | os.PathLike) -> dict:
    """``meta.json`` of a prepared folder, checked for the fields readers rely on."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"prepared data folder not found: {root} (run `python -m ovq.data.prepare`)")
    path = root / "meta.json"
    meta = read_json(path, "prepared-data metadata")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"corrupt prepared-data metadata {path}: format is "
                         f"{meta.get('format') if isinstance(meta, dict) else type(meta).__name__!r}, expected {FORMAT!r}")
    for key in ("splits", "dtype", "tokenizer"):
        if key not in meta:
            raise ValueError(f"corrupt prepared-data metadata {path}: no {key!r}")
    return meta


class TokenShards:
    """Read-only view of one prepared split: memory-mapped shards, the document index, the token stream.

    ``verify=True`` also checks every file's sha256 and that all ids are below the vocabulary size.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", verify: bool = False):
        self.root = Path(root)
        self.meta = load_meta(self.root)
        meta_path = self.root / "meta.json"
        if split not in self.meta["splits"]:
            raise ValueError(f"split must be one of {sorted(self.meta['splits'])} (in {meta_path}), got {split!r}")
        self.split = split
        info = self.meta["splits"][split]
        try:
            self.dtype = np.dtype(self.meta["dtype"])
            self.eos_id = int(self.meta["tokenizer"]["eos_id"])
            self.vocab_size = int(self.meta["tokenizer"]["vocab_size"])
            shard_infos = list(info["shards"])
            self.ids = list(info["ids"])
            index_info = info["index"]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"corrupt prepared-data metadata {meta_path}: split {split!r}: {e!r}") from e

        self.shards: list[np.ndarray] = []
        for s in shard_infos:
            path = self.root / s["file"]
            if not path.is_file():
                raise FileNotFoundError(f"token shard not found: {path}")
            expected = int(s["tokens"]) * self.dtype.itemsize
            size = path.stat().st_size
            if size != expected:
                raise ValueError(f"token shard {path} has {size:,} bytes, expected {expected:,}: truncated or "
                                 f"corrupt; prepare the data again")
            if verify and sha256_file(path) != s["sha256"]:
                raise ValueError(f"token shard {path} fails its sha256 check: corrupt; prepare the data again")
            self.shards.append(np.memmap(path, dtype=self.dtype, mode="r") if expected else
                               np.zeros(0, dtype=self.dtype))
        self.index = self._load_index(self.root / index_info["file"], index_info.get("sha256"), verify)
        if len(self.index) != len(self.ids):
            raise ValueError(f"corrupt index {self.root / index_info['file']}: {len(self.index)} rows for "
                             f"{len(self.ids)} documents in {meta_path}")
        sizes = np.array([len(s) for s in self.shards], dtype=np.int64)
        self.shard_offsets = np.concatenate([[0], np.cumsum(sizes)])
        if verify:
            for i, shard in enumerate(self.shards):
                if len(shard) and int(shard.max()) >= self.vocab_size:
                    raise ValueError(f"token shard {self.root / shard_infos[i]['file']} holds ids >= "
                                     f"vocab_size {self.vocab_size}: corrupt")

    def _load_index(self, path: Path, sha256: str | None, verify: bool) -> np.ndarray:
        if not path.is_file():
            raise FileNotFoundError(f"document index not found: {path}")
        try:
            index = np.load(path, allow_pickle=False)
        except Exception as e:  # numpy raises ValueError/OSError/EOFError/UnpicklingError on bad files
            raise ValueError(f"corrupt document index {path}: {e}") from e
        if verify and sha256 is not None and sha256_file(path) != sha256:
            raise ValueError(f"document index {path} fails its sha256 check: corrupt")
        if index.ndim != 2 or index.shape[1] != 3 or index.dtype != np.int64:
            raise ValueError(f"corrupt document index {path}: shape {index.shape} dtype {index.dtype}, "
                             f"expected [n, 3] int64")
        if len(index):
            shard, start, length = index.T
            if shard.min() < 0 or shard.max() >= len(self.shards) or start.min() < 0 or length.min() < 0:
                raise ValueError(f"corrupt document index {path}: entries out of range")
            ends = start + length
            limits = np.array([len(s) for s in self.shards], dtype=np.int64)[shard]
            if np.any(ends >= limits):
                raise ValueError(f"corrupt document index {path}: a document runs past the end of its shard")
            separators = np.array([self.shards[s][e] for s, e in zip(shard.tolist(), ends.tolist())])
            if np.any(separators != self.eos_id):
                bad = int(np.flatnonzero(separators != self.eos_id)[0])
                raise ValueError(f"token shard or index corrupt: document {bad} of {path} is not followed by "
                                 f"the <|endoftext|> separator")
        return index

    # --- documents -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    @property
    def num_documents(self) -> int:
        return len(self.index)

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per document (without the separator)."""
        return self.index[:, 2]

    def document(self, i: int) -> np.ndarray:
        """Token ids of document ``i`` (a read-only memory-mapped view)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"document {i} out of range for {len(self)} documents")
        shard, start, length = (int(x) for x in self.index[i])
        return self.shards[shard][start:start + length]

    # --- the token stream (all shards back to back, separators included) -------------------------
    @property
    def num_tokens(self) -> int:
        return int(self.shard_offsets[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        """``length`` tokens of the stream from ``start`` (copied; may cross shard boundaries)."""
        if start < 0 or length < 0 or start + length > self.num_tokens:
            raise IndexError(f"tokens [{start}, {start + length}) out of range for a stream of {self.num_tokens}")
        out = np.empty(length, dtype=self.dtype)
        filled = 0
        k = int(np.searchsorted(self.shard_offsets, start, side="right")) - 1
        while filled < length:
            lo = start + filled - int(self.shard_offsets[k])
            take = min(length - filled, len(self.shards[k]) - lo)
            out[filled:filled + take] = self.shards[k][lo:lo + take]
            filled += take
            k += 1
        return out
