"""Byte-level BPE (GPT-2 style) trained with Hugging Face ``tokenizers`` on the training split.

Byte-level: every string round-trips (``decode(encode(s)) == s``), no unknown tokens. One special
token, ``<|endoftext|>`` (id 0), separates documents in the token stream and serves as BOS/EOS/pad.
:func:`encode_texts` encodes documents with special-token matching off, so a literal
"<|endoftext|>" inside a book is ordinary text and id 0 only ever marks a document boundary.
Saved as ``tokenizer.json``; :func:`to_hf_tokenizer` wraps it as a ``transformers.PreTrainedTokenizerFast``
so it can be saved next to a model (``save_pretrained``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from ..io import atomic_write_text

EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (EOS_TOKEN,)
DEFAULT_VOCAB_SIZE = 16384


def new_byte_level_bpe() -> Tokenizer:
    """An untrained byte-level BPE tokenizer: GPT-2 pre-tokenization, no normalizer (keeps text exact)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE, min_frequency: int = 2,
                    length: int | None = None) -> Tokenizer:
    """Train a byte-level BPE on ``texts`` (an iterable of documents). ``length``: their count, for progress."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    min_vocab = 256 + len(SPECIAL_TOKENS)
    if not min_vocab <= vocab_size <= 2**32:
        raise ValueError(f"vocab_size must be in [{min_vocab}, 2**32] (256 bytes + special tokens), got {vocab_size}")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency must be an int >= 1, got {min_frequency!r}")
    tok = new_byte_level_bpe()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    if tok.token_to_id(EOS_TOKEN) != 0:
        raise RuntimeError(f"{EOS_TOKEN} did not get id 0")
    return tok


def encode_texts(tok: Tokenizer, texts: list[str], dtype=np.uint32) -> list[np.ndarray]:
    """Token ids of each text (no special tokens added or matched), in parallel, as numpy arrays."""
    previous = tok.encode_special_tokens
    tok.encode_special_tokens = True
    try:
        encodings = tok.encode_batch_fast(list(texts), add_special_tokens=False)
    finally:
        tok.encode_special_tokens = previous
    return [np.asarray(e.ids, dtype=dtype) for e in encodings]


def decode_ids(tok: Tokenizer, ids) -> str:
    """Text of token ids (keeps special tokens: the inverse of :func:`encode_texts`)."""
    return tok.decode([int(i) for i in ids], skip_special_tokens=False)


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike) -> Path:
    """Write ``tokenizer.json`` atomically."""
    return atomic_write_text(path, tok.to_str(pretty=True))


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a ``tokenizer.json`` (or the one in a prepared-data folder); clear errors if absent or corrupt."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise ValueError(f"corrupt tokenizer file {path}: {e}") from e
    if tok.token_to_id(EOS_TOKEN) is None:
        raise ValueError(f"tokenizer {path} has no {EOS_TOKEN} token; it was not made by ovq.data")
    return tok


def to_hf_tokenizer(tok: Tokenizer | str | os.PathLike, model_max_length: int | None = None):
    """Wrap as ``transformers.PreTrainedTokenizerFast`` (``<|endoftext|>`` as BOS, EOS, UNK and pad)."""
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError as e:
        raise ImportError("to_hf_tokenizer needs `transformers`: pip install 'ovq[hf]'") from e
    if not isinstance(tok, Tokenizer):
        tok = load_tokenizer(tok)
    kwargs = {} if model_max_length is None else {"model_max_length": model_max_length}
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN,
                                   unk_token=EOS_TOKEN, pad_token=EOS_TOKEN, **kwargs)
