"""Documents and the text cleaning every source applies (newlines, BOM, Project Gutenberg boilerplate)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

# Modern Project Gutenberg files: "*** START OF THE PROJECT GUTENBERG EBOOK <TITLE> ***" ... "*** END OF ...".
_PG_START = re.compile(r"^\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK[^\n]*$", re.I | re.M)
_PG_END = re.compile(r"^\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK[^\n]*$", re.I | re.M)
# Older files (1990s-2000s): a legal header that ends with "*END*THE SMALL PRINT!..." and a closing line
# such as "End of the Project Gutenberg EBook of ..." or "End of Project Gutenberg's ...".
_PG_OLD_START = re.compile(r"^\*END\*?THE SMALL PRINT![^\n]*$", re.I | re.M)
_PG_OLD_END = re.compile(r"^\s*\**\s*End of (?:the )?Project Gutenberg(?:'s)?\b[^\n]*$", re.I | re.M)


@dataclass(frozen=True)
class Document:
    """One document (a book, a file, a dataset row): text plus what is known about where it came from.

    ``group``: documents that share a group always land in the same split (different editions or
    overlapping volumes of one work must not straddle train and held-out); empty means the id.
    ``split``: a split fixed by the source itself (a Hugging Face dataset's own validation split), or None.
    ``meta``: provenance written to the manifest (package, version, license, path, URL, ...).
    """

    id: str
    text: str
    title: str = ""
    group: str = ""
    split: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def group_key(self) -> str:
        return self.group or self.id


def strip_gutenberg(text: str) -> str:
    """Remove a Project Gutenberg header and license footer if present; other text is returned unchanged."""
    start = _PG_START.search(text) or _PG_OLD_START.search(text)
    if start is not None:
        text = text[start.end():]
    end = _PG_END.search(text) or _PG_OLD_END.search(text)
    if end is not None:
        text = text[:end.start()]
    return text


def normalize_text(text: str) -> str:
    """Uniform plain text: no BOM, ``\\n`` newlines, no trailing spaces, at most two blank lines in a row."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t\f\v]+\n", "\n", text)
    text = re.sub(r"\n{4,}", "\n\n\n", text)
    return text.strip() + "\n" if text.strip() else ""


def clean_text(text: str, gutenberg: bool = True) -> str:
    """What every source applies: Gutenberg boilerplate removal (optional), then :func:`normalize_text`."""
    text = normalize_text(text)
    return normalize_text(strip_gutenberg(text)) if gutenberg else text


def decode_bytes(data: bytes) -> tuple[str, str]:
    """Decode text of unknown encoding: UTF-8 (with or without BOM), else Windows-1252, else Latin-1."""
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError:
            pass
    return data.decode("latin-1"), "latin-1"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
