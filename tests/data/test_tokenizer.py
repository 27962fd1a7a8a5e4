"""The byte-level BPE: trained with `tokenizers`, exact round trip, save/load, Hugging Face wrapper."""

import pytest

from ovq.data.sources import SampleSource
from ovq.data.tokenizer import (EOS_TOKEN, decode_ids, encode_texts, load_tokenizer, save_tokenizer,
                                to_hf_tokenizer, train_tokenizer)

TRICKY = ["  leading spaces, trailing spaces   \n\n\n", "tabs\tand\r\nCRLF", "ünïcödé — “quotes” 日本語 🙂",
          "a literal <|endoftext|> inside a book", "", "\x00\x7f control"]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([d.text for d in SampleSource().documents()], vocab_size=600)


def test_trained_vocab_and_special_token(tok):
    assert tok.get_vocab_size() == 600
    assert tok.token_to_id(EOS_TOKEN) == 0


def test_round_trip(tok):
    texts = [d.text for d in SampleSource().documents()] + TRICKY
    for text, ids in zip(texts, encode_texts(tok, texts)):
        assert decode_ids(tok, ids) == text
        assert 0 not in ids.tolist()  # id 0 only ever separates documents
    sample = [d.text for d in SampleSource().documents()]
    # Merges were learned: the training text compresses well below one token per byte.
    assert sum(map(len, encode_texts(tok, sample))) < 0.5 * sum(len(t.encode()) for t in sample)


def test_save_load(tok, tmp_path):
    path = save_tokenizer(tok, tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path)  # a folder works too
    assert again.to_str() == tok.to_str()
    assert encode_texts(again, TRICKY)[2].tolist() == encode_texts(tok, TRICKY)[2].tolist()
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        load_tokenizer(tmp_path / "missing.json")
    path.write_text('{"version": "1.0", "model": ')
    with pytest.raises(ValueError, match="corrupt tokenizer file"):
        load_tokenizer(path)


def test_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size must be in"):
        train_tokenizer(["x"], vocab_size=100)
    with pytest.raises(TypeError, match="vocab_size must be an int"):
        train_tokenizer(["x"], vocab_size=1000.0)
    with pytest.raises(ValueError, match="min_frequency"):
        train_tokenizer(["x"], vocab_size=300, min_frequency=0)


def test_hugging_face_wrapper(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = to_hf_tokenizer(tok, model_max_length=65536)
    assert isinstance(hf, transformers.PreTrainedTokenizerFast)
    assert hf.eos_token_id == hf.pad_token_id == 0 and len(hf) == 600
    text = TRICKY[2] + TRICKY[0]
    assert hf(text)["input_ids"] == encode_texts(tok, [text])[0].tolist()
    assert hf.decode(hf(text)["input_ids"]) == text
    hf.save_pretrained(tmp_path / "model")
    again = transformers.AutoTokenizer.from_pretrained(tmp_path / "model")
    assert again(text)["input_ids"] == hf(text)["input_ids"] and again.eos_token == EOS_TOKEN
