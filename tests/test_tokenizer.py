"""minigpt.tokenizer: round trips, vocabularies, GPT-2 BPE from local files, bad input."""

import os
import pathlib

import pytest
import torch

from minigpt.tokenizer import (
    GPT2_FILE_SHA256,
    ByteTokenizer,
    CharTokenizer,
    get_tokenizer,
    gpt2_tokenizer,
    tokenizer_from_dict,
)

TEXTS = ["", "hello world", "First Citizen:\nBefore we proceed any further, hear me speak.",
         "naïve café, Straße, ΚΑΛΗΜΕΡΑ, 日本語, עברית", "emoji 🙂👍🏽 and a flag 🇫🇷", "\x00\t\r\n\x7f \u200b\U0010ffff"]

GPT2_DIR = pathlib.Path(os.environ.get("MINIGPT_DATA_DIR") or "/nonexistent") / "gpt2"
needs_gpt2_files = pytest.mark.skipif(not all((GPT2_DIR / f).is_file() for f in GPT2_FILE_SHA256),
                                      reason="GPT-2 BPE files not found: set MINIGPT_DATA_DIR to a folder "
                                             "holding gpt2/vocab.bpe and gpt2/encoder.json")


@pytest.fixture(scope="module")
def gpt2():
    return gpt2_tokenizer(GPT2_DIR)


@pytest.mark.parametrize("text", TEXTS)
def test_byte_round_trip_on_any_text(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text


def test_byte_decode_of_a_cut_character_gives_replacement_not_error():
    ids = ByteTokenizer().encode("🙂")  # 4 bytes
    assert ByteTokenizer().decode(ids[:3]) == "\ufffd"


def test_char_vocabulary_is_sorted_unique_characters():
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == [" ", "d", "e", "h", "l", "o", "r", "w"]
    assert tok.vocab_size == 8
    assert tok.encode("hello") == [3, 2, 4, 4, 5]


@pytest.mark.parametrize("text", TEXTS[1:])
def test_char_round_trip_on_text_of_its_vocabulary(text):
    tok = CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text


def test_char_unknown_character_raises_value_error_naming_it():
    with pytest.raises(ValueError, match="'z'"):
        CharTokenizer.from_text("abc").encode("abz")


def test_char_to_dict_round_trip_keeps_ids():
    tok = CharTokenizer.from_text("To be, or not to be")
    again = tokenizer_from_dict(tok.to_dict())
    assert again.chars == tok.chars
    assert again.encode("be or not") == tok.encode("be or not")


@pytest.mark.parametrize("name", ["byte", "char"])
def test_decode_out_of_vocabulary_id_raises_value_error(name):
    tok = get_tokenizer(name, text="abc")
    with pytest.raises(ValueError, match=f"id {tok.vocab_size} is outside"):
        tok.decode([0, tok.vocab_size])


def test_decode_accepts_a_tensor_of_ids():
    tok = ByteTokenizer()
    assert tok.decode(torch.tensor(tok.encode("hi"))) == "hi"


def test_get_tokenizer_rejects_unknown_names_and_char_without_text():
    with pytest.raises(ValueError, match="'bpe'.*byte"):
        get_tokenizer("bpe")
    with pytest.raises(ValueError, match="text"):
        get_tokenizer("char")


@needs_gpt2_files
def test_gpt2_from_local_files_gives_known_ids(gpt2):
    # tiktoken.get_encoding("gpt2").encode("Hello world") == [15496, 995]
    assert gpt2.encode("Hello world") == [15496, 995]
    assert (gpt2.name, gpt2.vocab_size, gpt2.eot_token) == ("gpt2", 50257, 50256)


@needs_gpt2_files
@pytest.mark.parametrize("text", TEXTS)
def test_gpt2_round_trip_on_any_text(gpt2, text):
    assert gpt2.decode(gpt2.encode(text)) == text


@needs_gpt2_files
def test_gpt2_encodes_special_token_text_as_ordinary_text(gpt2):
    ids = gpt2.encode("<|endoftext|>")
    assert gpt2.eot_token not in ids and gpt2.decode(ids) == "<|endoftext|>"


@needs_gpt2_files
def test_gpt2_from_data_dir_env_matches_explicit_dir(gpt2, monkeypatch):
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(GPT2_DIR.parent))
    assert get_tokenizer("gpt2").encode("To be, or not to be") == gpt2.encode("To be, or not to be")


@needs_gpt2_files
def test_gpt2_rejects_a_file_with_the_wrong_sha256(tmp_path):
    (tmp_path / "vocab.bpe").write_bytes((GPT2_DIR / "vocab.bpe").read_bytes())
    (tmp_path / "encoder.json").write_bytes((GPT2_DIR / "encoder.json").read_bytes()[:-2] + b" }")
    with pytest.raises(ValueError, match=GPT2_FILE_SHA256["encoder.json"]):
        gpt2_tokenizer(tmp_path)


def test_gpt2_explicit_dir_without_files_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.bpe"):
        gpt2_tokenizer(tmp_path)


def all_tokenizers():
    """byte and char always; gpt2 when its local files are there."""
    toks = [get_tokenizer("byte"), get_tokenizer("char", text="abc")]
    return toks + ([gpt2_tokenizer(GPT2_DIR)] if all((GPT2_DIR / f).is_file() for f in GPT2_FILE_SHA256) else [])


@pytest.mark.parametrize("bad", [b"abc", 12, None, ["a", "b"]])
def test_encode_refuses_non_strings_naming_the_type(bad):
    for tok in all_tokenizers():
        with pytest.raises(ValueError, match=f"encode needs a str, got {type(bad).__name__}"):
            tok.encode(bad)


@pytest.mark.parametrize("bad", [[1, 2.0], [1.7], ["1"], [True], [None], torch.tensor([1.0]),
                                 torch.tensor([True]), "ab", 5, torch.zeros(1, 2, dtype=torch.long)])
def test_decode_refuses_ids_that_are_not_integers(bad):
    for tok in all_tokenizers():
        with pytest.raises(ValueError, match="id|integer"):
            tok.decode(bad)


@pytest.mark.parametrize("bad", [-1, 10**6])
def test_decode_refuses_ids_outside_the_vocabulary(bad):
    for tok in all_tokenizers():
        with pytest.raises(ValueError, match=f"id {bad} is outside the vocabulary"):
            tok.decode([0, bad])
        with pytest.raises(ValueError, match=f"id {bad} is outside the vocabulary"):
            tok.decode(torch.tensor([bad]))


def test_char_tokenizer_refuses_non_string_vocabularies():
    with pytest.raises(ValueError, match="distinct single characters"):
        CharTokenizer([1, 2])
    with pytest.raises(ValueError, match="list"):
        CharTokenizer.from_text(["a", "b"])
