"""Data for long-context language modeling: sources, a split by documents, a byte-level BPE tokenizer,
memory-mapped token shards, and loaders (resumable training windows, whole held-out documents).

    python -m ovq.data.prepare --source books --out data/books

See docs/data.md.
"""

from .documents import Document, clean_text, normalize_text, strip_gutenberg
from .loader import HeldOutDocuments, TokenWindows
from .shards import ShardWriter, TokenShards, load_meta
from .sources import (BooksSource, DocumentSource, HuggingFaceSource, LocalFilesSource, SampleSource,
                      get_source)
from .split import SplitConfig, split_documents
from .tokenizer import (EOS_TOKEN, decode_ids, encode_texts, load_tokenizer, save_tokenizer, to_hf_tokenizer,
                        train_tokenizer)



def __getattr__(name):  # ``prepare`` lazily, so ``python -m ovq.data.prepare`` does not import itself twice
    if name == "prepare":
        from .prepare import prepare

        return prepare
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Document", "clean_text", "normalize_text", "strip_gutenberg",
    "DocumentSource", "SampleSource", "BooksSource", "LocalFilesSource", "HuggingFaceSource", "get_source",
    "SplitConfig", "split_documents",
    "EOS_TOKEN", "train_tokenizer", "save_tokenizer", "load_tokenizer", "to_hf_tokenizer", "encode_texts",
    "decode_ids",
    "ShardWriter", "TokenShards", "load_meta", "prepare",
    "TokenWindows", "HeldOutDocuments",
]
