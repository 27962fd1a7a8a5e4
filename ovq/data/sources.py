"""Where documents come from: the built-in sample, the "books" corpus, local text files, Hugging Face.

Every source is re-iterable (``documents()`` may be called once per prepare pass) and describes itself
(``describe()``, part of the prepared data's fingerprint). Pick one from a spec string with :func:`get_source`:

    "sample"             the few-KB sample shipped in ovq/data/sample (tests, smoke runs)
    "books"              the offline public-domain corpus (ovq.data.books)
    "hf:NAME[:CONFIG]"   a Hugging Face dataset, e.g. "hf:pg19"
    PATH                 a text file, a folder (its files matching ``pattern``) or a glob; one document per file
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
from pathlib import Path
from typing import Iterable, Iterator

from .documents import Document, clean_text, decode_bytes, sha256_text

SAMPLE_DIR = Path(__file__).parent / "sample"

# Column names of known Hugging Face datasets (``datasets.load_dataset`` is given the name unchanged).
HF_PRESETS = {
    "pg19": {"text_field": "text", "title_field": "short_book_title", "heldout_split": "validation"},
    "deepmind/pg19": {"text_field": "text", "title_field": "short_book_title", "heldout_split": "validation"},
}


class DocumentSource:
    """Base class: a named, re-iterable stream of :class:`Document`."""

    name = "source"

    def describe(self) -> dict:
        raise NotImplementedError

    def documents(self) -> Iterator[Document]:
        raise NotImplementedError


class SampleSource(DocumentSource):
    """The five short public-domain passages in ``ovq/data/sample`` (described in its SOURCES.json)."""

    name = "sample"

    def describe(self) -> dict:
        return {"source": "sample"}

    def documents(self) -> Iterator[Document]:
        listing = json.loads((SAMPLE_DIR / "SOURCES.json").read_text(encoding="utf-8"))
        for entry in listing["documents"]:
            path = SAMPLE_DIR / entry["file"]
            yield Document(id=f"sample/{path.stem}", text=clean_text(path.read_text(encoding="utf-8")),
                           title=entry["title"],
                           meta={"author": entry["author"], "origin": entry["origin"], "text_license": entry["license"]})


class BooksSource(DocumentSource):
    """The offline "books" corpus, fetched once per process with the package managers (see ovq.data.books)."""

    name = "books"

    def __init__(self, packages: Iterable[str] | None = None, cache_dir: str | Path | None = None, log=print):
        from .books import BOOK_PACKAGE_NAMES

        self.packages = tuple(BOOK_PACKAGE_NAMES if packages is None else packages)
        self.cache_dir, self.log = cache_dir, log
        self._docs: list[Document] | None = None

    def describe(self) -> dict:
        return {"source": "books", "packages": list(self.packages)}

    def documents(self) -> Iterator[Document]:
        if self._docs is None:
            from .books import fetch_books

            self._docs = fetch_books(self.packages, cache_dir=self.cache_dir, log=self.log)
        return iter(self._docs)


def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


class LocalFilesSource(DocumentSource):
    """Text files on disk, one document per file.

    ``paths``: files, folders (searched with ``pattern``, recursive by default) or glob patterns.
    Files are read as UTF-8 (falling back to Windows-1252/Latin-1), cleaned, and Project Gutenberg
    boilerplate is removed when ``gutenberg`` is true. Empty files are skipped.
    """

    name = "files"

    def __init__(self, paths, pattern: str = "**/*.txt", gutenberg: bool = True):
        if isinstance(paths, (str, Path)):
            paths = [paths]
        self.paths = [str(p) for p in paths]
        if not self.paths:
            raise ValueError("paths must name at least one file, folder or glob")
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"pattern must be a non-empty glob pattern, got {pattern!r}")
        self.pattern, self.gutenberg = pattern, gutenberg
        self.files = self._find_files()

    def _find_files(self) -> list[Path]:
        files: list[Path] = []
        for p in self.paths:
            if _has_magic(p):
                found = sorted(Path(f) for f in globlib.glob(p, recursive=True) if Path(f).is_file())
                if not found:
                    raise FileNotFoundError(f"no files match the glob {p!r}")
            elif Path(p).is_dir():
                found = sorted(f for f in Path(p).glob(self.pattern) if f.is_file())
                if not found:
                    raise FileNotFoundError(f"no files matching {self.pattern!r} in the folder {p}")
            elif Path(p).is_file():
                found = [Path(p)]
            else:
                raise FileNotFoundError(f"path not found: {p}")
            files.extend(found)
        return list(dict.fromkeys(files))  # drop repeats, keep order

    def describe(self) -> dict:
        return {"source": "files", "paths": self.paths, "pattern": self.pattern, "gutenberg": self.gutenberg,
                "files": [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in self.files]}

    def documents(self) -> Iterator[Document]:
        for path in self.files:
            raw = path.read_bytes()
            text, encoding = decode_bytes(raw)
            text = clean_text(text, gutenberg=self.gutenberg)
            if not text:
                continue
            yield Document(id=path.as_posix(), text=text, title=path.stem,
                           meta={"path": str(path), "encoding": encoding, "file_sha256": _sha256_bytes(raw)})


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class HuggingFaceSource(DocumentSource):
    """A Hugging Face dataset through ``datasets.load_dataset`` (optional dependency: ``pip install 'ovq[hf]'``).

    ``train_split`` rows become training documents and ``heldout_split`` rows held-out ones: the
    dataset's own split is kept ("auto": the preset's, e.g. PG19's "validation"; None: split by prepare).
    ``text_field`` holds the text, ``title_field`` (optional) a title.
    ``limit`` caps the rows read per split (for trials). Extra ``load_kwargs`` go to ``load_dataset``
    (e.g. ``revision``, ``cache_dir``, ``data_files``). Needs network the first time unless cached.
    """

    name = "hf"

    def __init__(self, dataset: str, config: str | None = None, *, text_field: str | None = None,
                 title_field: str | None = None, train_split: str = "train", heldout_split: str | None = "auto",
                 limit: int | None = None, streaming: bool = False, gutenberg: bool = False, **load_kwargs):
        if not isinstance(dataset, str) or not dataset:
            raise ValueError(f"dataset must be a Hugging Face dataset name, got {dataset!r}")
        preset = HF_PRESETS.get(dataset, {})
        self.dataset, self.config = dataset, config
        self.text_field = text_field or preset.get("text_field", "text")
        self.title_field = title_field if title_field is not None else preset.get("title_field")
        self.train_split = train_split
        self.heldout_split = preset.get("heldout_split") if heldout_split == "auto" else heldout_split
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be a positive int or None, got {limit!r}")
        self.limit, self.streaming, self.gutenberg, self.load_kwargs = limit, streaming, gutenberg, load_kwargs

    def describe(self) -> dict:
        return {"source": "hf", "dataset": self.dataset, "config": self.config, "text_field": self.text_field,
                "title_field": self.title_field, "train_split": self.train_split,
                "heldout_split": self.heldout_split, "limit": self.limit, "gutenberg": self.gutenberg,
                "load_kwargs": {k: str(v) for k, v in sorted(self.load_kwargs.items())}}

    def _load(self, split: str):
        try:
            import datasets
        except ImportError as e:
            raise ImportError("the Hugging Face source needs the `datasets` package: pip install 'ovq[hf]'") from e
        return datasets.load_dataset(self.dataset, self.config, split=split, streaming=self.streaming,
                                     **self.load_kwargs)

    def documents(self) -> Iterator[Document]:
        splits = [(self.train_split, "train")]
        if self.heldout_split:
            splits.append((self.heldout_split, "heldout"))
        for hf_split, ours in splits:
            for i, row in enumerate(self._load(hf_split)):
                if self.limit is not None and i >= self.limit:
                    break
                if self.text_field not in row:
                    raise ValueError(f"text_field {self.text_field!r} is not a column of {self.dataset} "
                                     f"(split {hf_split}); columns: {sorted(row)}")
                text = row[self.text_field]
                if not isinstance(text, str):
                    raise TypeError(f"{self.dataset}[{hf_split}][{i}].{self.text_field} is "
                                    f"{type(text).__name__}, expected str")
                text = clean_text(text, gutenberg=self.gutenberg)
                if not text:
                    continue
                title = str(row.get(self.title_field) or "") if self.title_field else ""
                meta = {"dataset": self.dataset, "config": self.config, "hf_split": hf_split, "row": i}
                for key in ("url", "publication_date"):
                    if key in row and row[key] is not None:
                        meta[key] = str(row[key])
                yield Document(id=f"{self.dataset}/{hf_split}/{i}", text=text, title=title, split=ours, meta=meta)


def get_source(spec: str, **options) -> DocumentSource:
    """A source from its spec string (see the module docstring); ``options`` go to the source's constructor."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"source must be 'sample', 'books', 'hf:NAME[:CONFIG]' or a path, got {spec!r}")
    if spec == "sample":
        return SampleSource()
    if spec == "books":
        return BooksSource(**options)
    if spec.startswith("hf:"):
        name, _, config = spec[3:].partition(":")
        return HuggingFaceSource(name, config or None, **options)
    return LocalFilesSource(spec, **options)


def document_record(doc: Document) -> dict:
    """The manifest entry of a document (no text): id, title, group, chars, sha256 and provenance."""
    return {"id": doc.id, "title": doc.title, "group": doc.group_key, "chars": len(doc.text),
            "sha256": sha256_text(doc.text)} | doc.meta
