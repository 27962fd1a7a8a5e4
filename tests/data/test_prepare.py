"""prepare: documents -> split -> tokenizer -> shards; exact contents, idempotent, atomic, clear errors."""

import json
import sys
import types

import pytest
from data_helpers import SAMPLE_SPLIT, prepare_sample

import ovq.data.prepare as prepare_module
from ovq.data import decode_ids, load_meta, load_tokenizer
from ovq.data.prepare import main, prepare
from ovq.data.shards import TokenShards
from ovq.data.sources import SampleSource


def test_outputs_decode_to_the_documents(sample_data):
    meta = load_meta(sample_data)
    manifest = json.loads((sample_data / "manifest.json").read_text())
    tok = load_tokenizer(sample_data)
    texts = {d.id: d.text for d in SampleSource().documents()}
    assert meta["totals"]["documents"] == len(manifest["documents"]) == len(texts) == 5
    seen = {}
    for split in ("train", "heldout"):
        shards = TokenShards(sample_data, split, verify=True)
        for i, doc_id in enumerate(shards.ids):
            assert decode_ids(tok, shards.document(i)) == texts[doc_id]
            seen[doc_id] = split
    assert len(seen) == 5 and set(seen.values()) == {"train", "heldout"}
    for rec in manifest["documents"]:
        assert rec["split"] == seen[rec["id"]]
        assert rec["chars"] == len(texts[rec["id"]]) and len(rec["sha256"]) == 64
        assert {"title", "tokens", "origin", "text_license"} <= set(rec)
    assert meta["tokenizer"]["vocab_size"] == 512 and meta["dtype"] == "<u2"


def test_tokenizer_is_trained_on_the_training_split_only(tmp_path, monkeypatch):
    seen = []
    real = prepare_module.train_tokenizer

    def spy(texts, **kw):
        texts = list(texts)
        seen.extend(texts)
        return real(texts, **kw)

    monkeypatch.setattr(prepare_module, "train_tokenizer", spy)
    prepare_sample(tmp_path / "out")
    heldout = TokenShards(tmp_path / "out", "heldout")
    texts = {d.id: d.text for d in SampleSource().documents()}
    assert seen and not set(seen) & {texts[i] for i in heldout.ids}


def test_idempotent(sample_data):
    before = {p: p.stat().st_mtime_ns for p in sample_data.rglob("*")}
    meta = prepare_sample(sample_data, shard_tokens=2000)
    assert meta == load_meta(sample_data)
    assert {p: p.stat().st_mtime_ns for p in sample_data.rglob("*")} == before


def test_other_settings_need_overwrite(tmp_path):
    out = tmp_path / "out"
    first = prepare_sample(out)
    with pytest.raises(FileExistsError, match="prepared with other settings.*--overwrite"):
        prepare_sample(out, vocab_size=600)
    second = prepare_sample(out, vocab_size=600, overwrite=True)
    assert second["tokenizer"]["vocab_size"] == 600 and second["fingerprint"] != first["fingerprint"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no work folders left behind


def test_refuses_foreign_folder_and_file(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a prepared-data folder"):
        prepare_sample(tmp_path / "mine")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        prepare_sample(tmp_path / "file")


def test_damaged_output_is_reported(tmp_path):
    out = tmp_path / "out"
    prepare_sample(out)
    next((out / "train").glob("tokens-*.bin")).write_bytes(b"\x00")
    with pytest.raises(ValueError, match="damaged prepared data"):
        prepare_sample(out)
    prepare_sample(out, overwrite=True)
    TokenShards(out, "train")


def test_crash_leaves_previous_output(tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = prepare_sample(out)

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash while tokenizing")

    monkeypatch.setattr(prepare_module, "encode_texts", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_sample(out, vocab_size=600, overwrite=True)
    assert load_meta(out) == first
    TokenShards(out, "train", verify=True)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_sample(tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_stale_work_folder_of_a_dead_run_is_removed(tmp_path):
    stale = tmp_path / ".out.prepare-999999999-deadbeef"
    stale.mkdir()
    (stale / "partial.bin").write_bytes(b"12")
    prepare_sample(tmp_path / "out")
    assert not stale.exists()


def test_long_document_check(tmp_path):
    split = SAMPLE_SPLIT.__class__(heldout_long_docs=1, long_doc_chars=1000, max_heldout_share=0.5)
    with pytest.raises(ValueError, match="only 0 held-out documents have >= 100,000 tokens"):
        prepare_sample(tmp_path / "out", split=split, long_doc_tokens=100_000)
    meta = prepare_sample(tmp_path / "out", split=split, long_doc_tokens=500)
    assert meta["totals"]["long_documents"]["heldout"] >= 1


def test_reuse_tokenizer_and_local_files(sample_data, tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, doc in enumerate(SampleSource().documents()):
        (folder / f"{i}.txt").write_text(doc.text)
    meta = prepare(str(folder), tmp_path / "out", tokenizer=sample_data / "tokenizer.json",
                   split=SAMPLE_SPLIT, log=lambda *a: None)
    assert meta["tokenizer"]["sha256"] == load_meta(sample_data)["tokenizer"]["sha256"]
    assert meta["totals"]["tokens"] == load_meta(sample_data)["totals"]["tokens"]


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="split must be a SplitConfig"):
        prepare("sample", tmp_path / "o", split={"seed": 1})
    with pytest.raises(ValueError, match="shard_tokens must be an int >= 2"):
        prepare("sample", tmp_path / "o", shard_tokens=1)
    with pytest.raises(FileNotFoundError, match="path not found"):
        prepare(str(tmp_path / "no-such-dir"), tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        prepare("sample", tmp_path / "o", tokenizer=tmp_path / "none.json")


def test_command_line(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--source", "sample", "--out", str(out), "--vocab-size", "400", "--heldout-long-docs", "0",
            "--heldout-fraction", "0.4", "--max-heldout-share", "0.5", "--seed", "3"]
    meta = main(args)
    assert meta["settings"]["split"]["seed"] == 3 and (out / "meta.json").is_file()
    assert "documents 5" in capsys.readouterr().out
    main(args)
    assert "nothing to do" in capsys.readouterr().out


def test_deterministic(sample_data, tmp_path):
    again = tmp_path / "again"
    prepare_sample(again, shard_tokens=2000)
    for name in ("tokenizer.json", "train/tokens-00000.bin", "train/index.npy", "heldout/tokens-00000.bin"):
        assert (again / name).read_bytes() == (sample_data / name).read_bytes(), name


def test_summary(sample_data):
    from ovq.data.summary import summary_markdown

    text = summary_markdown(sample_data)
    assert text.startswith("5 documents, 12,")
    assert "| `sample/kjv-genesis-1` | Genesis 1:1-1:21 (King James Version) |" in text


def test_hugging_face_dataset_keeps_its_splits(tmp_path, monkeypatch):
    texts = [d.text for d in SampleSource().documents()]
    rows = {"train": [{"text": t, "short_book_title": f"B{i}"} for i, t in enumerate(texts[:4])],
            "validation": [{"text": texts[4], "short_book_title": "V"}]}
    fake = types.SimpleNamespace(load_dataset=lambda name, config=None, *, split, streaming, **kw: iter(rows[split]))
    monkeypatch.setitem(sys.modules, "datasets", fake)
    meta = prepare("hf:pg19", tmp_path / "pg19", vocab_size=400, split=SAMPLE_SPLIT, log=lambda *a: None)
    assert meta["splits"]["train"]["ids"] == [f"pg19/train/{i}" for i in range(4)]
    assert meta["splits"]["heldout"]["ids"] == ["pg19/validation/0"]
    tok = load_tokenizer(tmp_path / "pg19")
    assert decode_ids(tok, TokenShards(tmp_path / "pg19", "heldout").document(0)) == texts[4]
