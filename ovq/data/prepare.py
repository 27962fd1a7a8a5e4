"""Prepare a corpus once: documents -> split -> byte-level BPE -> memory-mapped token shards.

    python -m ovq.data.prepare --source books --out data/books           # the offline public-domain corpus
    python -m ovq.data.prepare --source sample --out data/sample --vocab-size 512 --heldout-long-docs 0 \\
        --heldout-fraction 0.4                                           # the tiny built-in sample
    python -m ovq.data.prepare --source ~/texts --out data/mine          # your own .txt files
    python -m ovq.data.prepare --source hf:pg19 --out data/pg19          # Hugging Face (needs network)

The output folder holds ``tokenizer.json``, ``train/`` and ``heldout/`` shards (see ovq.data.shards),
``manifest.json`` (every document: source, version, license, title, chars, tokens, sha256, split)
and ``meta.json`` (settings, fingerprint, file checksums, totals), written last.

Idempotent: a folder already prepared with the same settings is left as it is. Atomic: everything is
built in a hidden sibling folder and renamed into place at the end, so an interrupted run leaves
either the previous result or nothing under ``--out`` (leftovers of dead runs are removed next time).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import tokenizers

from ..io import atomic_write_json, fsync_dir
from .shards import DEFAULT_SHARD_TOKENS, FORMAT, ShardWriter, TokenShards, load_meta, sha256_file, token_dtype
from .sources import DocumentSource, document_record, get_source
from .split import SPLITS, SplitConfig, split_documents
from .tokenizer import (DEFAULT_VOCAB_SIZE, EOS_TOKEN, encode_texts, load_tokenizer, save_tokenizer,
                        train_tokenizer)

LONG_DOC_TOKENS = 65536
ENCODE_BATCH_CHARS = 32_000_000  # text handed to the tokenizer at once


def _fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_work_dirs(out: Path, log) -> None:
    """Delete hidden work folders of earlier prepare runs on ``out`` whose process is gone."""
    for path in out.parent.glob(f".{out.name}.prepare-*"):
        try:
            pid = int(path.name.rsplit(".prepare-", 1)[1].split("-")[0])
        except ValueError:
            continue
        if path.is_dir() and not _pid_alive(pid):
            log(f"removing the leftover of an interrupted run: {path}")
            shutil.rmtree(path, ignore_errors=True)


def _already_prepared(out: Path, fingerprint: str) -> dict | None:
    """The meta of ``out`` if it was prepared with these settings and its files are intact, else None."""
    meta = load_meta(out)
    if meta.get("fingerprint") != fingerprint:
        return None
    for split in meta["splits"]:
        TokenShards(out, split)  # sizes, index and separators; raises if damaged
    return meta


def _batches(docs, max_chars: int):
    batch, chars = [], 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc.text)
        if chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def prepare(source: str | DocumentSource, out: str | os.PathLike, *, vocab_size: int = DEFAULT_VOCAB_SIZE,
            min_frequency: int = 2, tokenizer: str | os.PathLike | None = None,
            tokenizer_train_chars: int | None = None, split: SplitConfig = SplitConfig(),
            long_doc_tokens: int = LONG_DOC_TOKENS, shard_tokens: int = DEFAULT_SHARD_TOKENS,
            overwrite: bool = False, source_options: dict | None = None, log=print) -> dict:
    """Prepare ``source`` into ``out``; returns the meta dict (also in ``out/meta.json``).

    ``tokenizer``: reuse this ``tokenizer.json`` instead of training one. ``tokenizer_train_chars``:
    train the tokenizer on at most this many characters of training text (default: all of it).
    ``split``: see :class:`~ovq.data.split.SplitConfig`; after tokenizing, at least
    ``split.heldout_long_docs`` held-out documents must have ``long_doc_tokens`` tokens or more.
    """
    t0 = time.perf_counter()
    if not isinstance(split, SplitConfig):
        raise TypeError(f"split must be a SplitConfig, got {type(split).__name__}")
    for name, value, low in (("long_doc_tokens", long_doc_tokens, 1), ("shard_tokens", shard_tokens, 2),
                             ("min_frequency", min_frequency, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if tokenizer_train_chars is not None and (not isinstance(tokenizer_train_chars, int) or tokenizer_train_chars < 1):
        raise ValueError(f"tokenizer_train_chars must be a positive int or None, got {tokenizer_train_chars!r}")
    src = get_source(source, **(source_options or {})) if isinstance(source, str) else source
    if not isinstance(src, DocumentSource):
        raise TypeError(f"source must be a spec string or a DocumentSource, got {type(source).__name__}")
    out = Path(out)
    given_tokenizer = None
    if tokenizer is not None:
        given_tokenizer = load_tokenizer(tokenizer)
        vocab_size = given_tokenizer.get_vocab_size()
    settings = {"format": FORMAT, "source": src.describe(), "vocab_size": vocab_size,
                "min_frequency": min_frequency,
                "tokenizer_sha256": None if tokenizer is None else _tokenizer_sha(tokenizer),
                "tokenizer_train_chars": tokenizer_train_chars, "split": split.to_dict(),
                "long_doc_tokens": long_doc_tokens, "shard_tokens": shard_tokens}
    fingerprint = _fingerprint(settings)

    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out must be a folder, and {out} is a file")
    if out.is_dir() and any(out.iterdir()):
        if (out / "meta.json").is_file():
            try:
                meta = _already_prepared(out, fingerprint)
            except (ValueError, FileNotFoundError) as e:
                if not overwrite:
                    raise ValueError(f"{out} holds damaged prepared data ({e}); pass overwrite=True "
                                     f"(--overwrite) to prepare it again") from e
                meta = None
            if meta is not None:
                log(f"{out} is already prepared with these settings (fingerprint {fingerprint[:12]}); nothing to do")
                return meta
            if not overwrite:
                raise FileExistsError(f"{out} holds data prepared with other settings; pass overwrite=True "
                                      f"(--overwrite) to replace it, or choose another --out")
        elif not overwrite:
            raise FileExistsError(f"{out} exists and is not a prepared-data folder; refusing to overwrite it")

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_work_dirs(out, log)
    work = out.parent / f".{out.name}.prepare-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        meta = _build(src, work, settings, fingerprint, given_tokenizer, log, t0)
        _swap_into_place(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log(f"wrote {out} in {time.perf_counter() - t0:.1f} s")
    return meta


def _tokenizer_sha(path) -> str:
    path = Path(path)
    return sha256_file(path / "tokenizer.json" if path.is_dir() else path)


def _build(src: DocumentSource, work: Path, settings: dict, fingerprint: str, tok, log, t0: float) -> dict:
    split_cfg = SplitConfig(**settings["split"])
    long_doc_tokens = settings["long_doc_tokens"]

    # 1. Documents and the split.
    log(f"reading documents from {settings['source']['source']} ...")
    records = []
    for doc in src.documents():
        records.append(document_record(doc) | {"split": doc.split})
    if not records:
        raise ValueError(f"the source {settings['source']} yielded no documents")
    assignment = split_documents(records, split_cfg)
    for r in records:
        r["split"] = assignment[r["id"]]
    counts = {s: sum(r["split"] == s for r in records) for s in SPLITS}
    log(f"  {len(records)} documents, {sum(r['chars'] for r in records):,} chars; "
        f"train {counts['train']}, heldout {counts['heldout']} ({time.perf_counter() - t0:.1f} s)")

    # 2. The tokenizer, trained on the training split only.
    if tok is None:
        limit = settings["tokenizer_train_chars"]

        def train_texts():
            used = 0
            for doc in src.documents():
                if assignment[doc.id] != "train":
                    continue
                text = doc.text if limit is None else doc.text[:max(0, limit - used)]
                if not text:
                    break
                used += len(text)
                yield text

        t = time.perf_counter()
        tok = train_tokenizer(train_texts(), vocab_size=settings["vocab_size"],
                              min_frequency=settings["min_frequency"], length=counts["train"])
        log(f"  trained a byte-level BPE, vocab {tok.get_vocab_size():,} ({time.perf_counter() - t:.1f} s)")
    tokenizer_path = save_tokenizer(tok, work / "tokenizer.json")
    vocab_size = tok.get_vocab_size()
    eos_id = tok.token_to_id(EOS_TOKEN)
    dtype = token_dtype(vocab_size)

    # 3. Tokens into shards, one writer per split, documents in source order.
    t = time.perf_counter()
    writers = {s: ShardWriter(work / s, dtype, eos_id, settings["shard_tokens"]) for s in SPLITS}
    ids: dict[str, list[str]] = {s: [] for s in SPLITS}
    tokens_of: dict[str, int] = {}
    for batch in _batches(src.documents(), ENCODE_BATCH_CHARS):
        for doc, arr in zip(batch, encode_texts(tok, [d.text for d in batch], dtype=dtype)):
            s = assignment[doc.id]
            writers[s].add(arr)
            ids[s].append(doc.id)
            tokens_of[doc.id] = int(arr.size)
    if set(tokens_of) != set(assignment):
        raise RuntimeError("the source yielded different documents on its second pass; it must be re-iterable")
    splits = {}
    for s in SPLITS:
        info = writers[s].close()
        lengths = np.array([tokens_of[i] for i in ids[s]], dtype=np.int64)
        info["ids"] = ids[s]
        info["long_documents"] = int((lengths >= long_doc_tokens).sum())
        info["chars"] = int(sum(r["chars"] for r in records if r["split"] == s))
        splits[s] = info
    log(f"  tokenized: train {splits['train']['tokens']:,} tokens, heldout {splits['heldout']['tokens']:,} "
        f"({time.perf_counter() - t:.1f} s)")
    need = split_cfg.heldout_long_docs
    if splits["heldout"]["long_documents"] < need:
        raise ValueError(f"only {splits['heldout']['long_documents']} held-out documents have >= {long_doc_tokens:,} "
                         f"tokens, fewer than heldout_long_docs={need}: raise long_doc_chars "
                         f"(now {split_cfg.long_doc_chars:,}) so that long means long in tokens too")

    # 4. Manifest and meta (meta last: its presence marks a complete folder).
    for r in records:
        r["tokens"] = tokens_of[r["id"]]
    atomic_write_json(work / "manifest.json", {"format": FORMAT, "source": settings["source"],
                                               "documents": records})
    meta = {
        "format": FORMAT, "fingerprint": fingerprint, "settings": settings,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 1),
        "dtype": dtype.str,
        "tokenizer": {"file": "tokenizer.json", "sha256": sha256_file(tokenizer_path), "vocab_size": vocab_size,
                      "eos_token": EOS_TOKEN, "eos_id": eos_id},
        "manifest": {"file": "manifest.json", "sha256": sha256_file(work / "manifest.json")},
        "splits": splits,
        "totals": {"documents": len(records), "chars": sum(r["chars"] for r in records),
                   "tokens": sum(splits[s]["tokens"] for s in SPLITS),
                   "long_documents": {s: splits[s]["long_documents"] for s in SPLITS},
                   "long_doc_tokens": long_doc_tokens},
        "versions": {"python": platform.python_version(), "tokenizers": tokenizers.__version__,
                     "numpy": np.__version__},
    }
    atomic_write_json(work / "meta.json", meta)
    fsync_dir(work)
    return meta


def _swap_into_place(work: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.prepare-{os.getpid()}-old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(work, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _print_summary(meta: dict, log=print) -> None:
    tot = meta["totals"]
    log(f"documents {tot['documents']}, chars {tot['chars']:,}, tokens {tot['tokens']:,}, "
        f"vocab {meta['tokenizer']['vocab_size']:,} ({meta['dtype']})")
    for s, info in meta["splits"].items():
        log(f"  {s:8s} {info['documents']:4d} documents, {info['chars']:>12,} chars, {info['tokens']:>12,} tokens, "
            f"{info['long_documents']} with >= {tot['long_doc_tokens']:,} tokens")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m ovq.data.prepare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, help="'books', 'sample', 'hf:NAME[:CONFIG]', or a file/folder/glob")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    ap.add_argument("--min-frequency", type=int, default=2, help="BPE: least count of a merged pair")
    ap.add_argument("--tokenizer", help="reuse this tokenizer.json (or prepared folder) instead of training one")
    ap.add_argument("--tokenizer-train-chars", type=int, help="train the tokenizer on at most this many chars")
    d = SplitConfig()
    ap.add_argument("--seed", type=int, default=d.seed, help="split seed")
    ap.add_argument("--heldout-long-docs", type=int, default=d.heldout_long_docs)
    ap.add_argument("--heldout-fraction", type=float, default=d.heldout_fraction)
    ap.add_argument("--long-doc-chars", type=int, default=d.long_doc_chars)
    ap.add_argument("--max-heldout-share", type=float, default=d.max_heldout_share)
    ap.add_argument("--long-doc-tokens", type=int, default=LONG_DOC_TOKENS)
    ap.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard file")
    ap.add_argument("--overwrite", action="store_true", help="replace an --out prepared with other settings")
    g = ap.add_argument_group("books")
    g.add_argument("--books-packages", help="comma-separated subset of the book packages")
    g.add_argument("--package-cache", help="keep downloaded packages here and reuse them")
    g = ap.add_argument_group("local files")
    g.add_argument("--pattern", default="**/*.txt", help="files to take from a folder")
    g.add_argument("--no-gutenberg", action="store_true", help="keep Project Gutenberg headers/footers")
    g = ap.add_argument_group("Hugging Face")
    g.add_argument("--hf-text-field")
    g.add_argument("--hf-title-field")
    g.add_argument("--hf-train-split", default="train")
    g.add_argument("--hf-heldout-split", default="auto", help="'auto' (the preset's), 'none', or a split name")
    g.add_argument("--hf-limit", type=int, help="rows per split (trials)")
    g.add_argument("--hf-streaming", action="store_true")
    g.add_argument("--hf-cache-dir")
    args = ap.parse_args(argv)

    if args.source == "books":
        options = {"packages": args.books_packages.split(",") if args.books_packages else None,
                   "cache_dir": args.package_cache}
    elif args.source.startswith("hf:"):
        options = {"text_field": args.hf_text_field, "title_field": args.hf_title_field,
                   "train_split": args.hf_train_split,
                   "heldout_split": None if args.hf_heldout_split == "none" else args.hf_heldout_split,
                   "limit": args.hf_limit, "streaming": args.hf_streaming}
        if args.hf_cache_dir:
            options["cache_dir"] = args.hf_cache_dir
    elif args.source == "sample":
        options = {}
    else:
        options = {"pattern": args.pattern, "gutenberg": not args.no_gutenberg}
    split = SplitConfig(heldout_long_docs=args.heldout_long_docs, heldout_fraction=args.heldout_fraction,
                        long_doc_chars=args.long_doc_chars, max_heldout_share=args.max_heldout_share,
                        seed=args.seed)
    meta = prepare(args.source, args.out, vocab_size=args.vocab_size, min_frequency=args.min_frequency,
                   tokenizer=args.tokenizer, tokenizer_train_chars=args.tokenizer_train_chars, split=split,
                   long_doc_tokens=args.long_doc_tokens, shard_tokens=args.shard_tokens,
                   overwrite=args.overwrite, source_options=options)
    _print_summary(meta)
    return meta


if __name__ == "__main__":
    try:
        main()
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, RuntimeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
