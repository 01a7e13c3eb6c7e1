"""minigpt.data and minigpt.download: locating tiny Shakespeare, splits, batches, checked atomic downloads."""

import hashlib
import os
import pathlib

import pytest
import torch

from minigpt import data
from minigpt.download import DownloadError, cache_dir, download
from minigpt.tokenizer import CharTokenizer

SHAKESPEARE = pathlib.Path(os.environ.get("MINIGPT_DATA_DIR") or "/nonexistent") / "tinyshakespeare" / "input.txt"
needs_shakespeare = pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="tiny Shakespeare not found: set "
                                       "MINIGPT_DATA_DIR to a folder holding tinyshakespeare/input.txt")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No data dir, an empty cache, and a URL that cannot be fetched."""
    monkeypatch.delenv("MINIGPT_DATA_DIR", raising=False)
    monkeypatch.setenv("MINIGPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "TINY_SHAKESPEARE_URL", "file:///nonexistent/input.txt")
    return tmp_path


def test_split_is_first_90_percent_then_last_10():
    ids = torch.arange(1000)
    train, val = data.split_train_val(ids)
    assert torch.equal(train, torch.arange(900)) and torch.equal(val, torch.arange(900, 1000))
    train, val = data.split_train_val("abcdefghij", train_frac=0.7)
    assert (train, val) == ("abcdefg", "hij")


@pytest.mark.parametrize("frac", [0.0, 1.0, 1.5])
def test_split_rejects_fraction_outside_open_unit_interval(frac):
    with pytest.raises(ValueError, match="train_frac"):
        data.split_train_val(torch.arange(10), frac)


def test_batch_shapes_dtype_and_shift_by_one():
    ids = torch.arange(100, dtype=torch.int32)  # token i has value i, so a window is a run of integers
    x, y = data.get_batch(ids, batch_size=5, block_size=8, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)
    assert torch.equal(x, x[:, :1] + torch.arange(8))  # contiguous windows
    assert int(y.max()) <= 99


def test_batches_are_deterministic_under_a_seeded_generator():
    ids = torch.randint(50, (500,))
    a = data.get_batch(ids, 4, 16, generator=torch.Generator().manual_seed(3))
    b = data.get_batch(ids, 4, 16, generator=torch.Generator().manual_seed(3))
    c = data.get_batch(ids, 4, 16, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_every_offset_including_the_last_can_be_drawn():
    x, _ = data.get_batch(torch.arange(10), batch_size=2000, block_size=7, generator=torch.Generator().manual_seed(0))
    assert sorted(set(x[:, 0].tolist())) == [0, 1, 2]  # N - T = 3 possible windows


def test_batch_rejects_data_too_short_and_bad_sizes():
    with pytest.raises(ValueError, match="needs at least 9"):
        data.get_batch(torch.arange(8), 2, 8)
    with pytest.raises(ValueError, match="batch_size"):
        data.get_batch(torch.arange(100), 0, 8)
    with pytest.raises(ValueError, match="block_size"):
        data.get_batch(torch.arange(100), 2, 8.0)


def test_encode_text_gives_int64_ids():
    ids = data.encode_text(CharTokenizer.from_text("abc"), "cab")
    assert ids.dtype == torch.int64 and ids.tolist() == [2, 0, 1]


@needs_shakespeare
def test_local_tiny_shakespeare_has_published_sha256_and_length():
    assert hashlib.sha256(SHAKESPEARE.read_bytes()).hexdigest() == data.TINY_SHAKESPEARE_SHA256
    assert len(data.load_tiny_shakespeare()) == data.TINY_SHAKESPEARE_CHARS


@needs_shakespeare
def test_char_split_matches_nanogpt_shakespeare_char():
    # nanoGPT data/shakespeare_char/prepare.py: vocab 65, train 1,003,854 tokens, val 111,540
    text = data.load_tiny_shakespeare()
    tok = CharTokenizer.from_text(text)
    train, val = data.split_train_val(data.encode_text(tok, text))
    assert (tok.vocab_size, len(train), len(val)) == (65, 1_003_854, 111_540)


def test_explicit_path_wins_and_is_used_as_is(offline):
    mine = offline / "mine.txt"
    mine.write_text("O Romeo")
    assert data.load_tiny_shakespeare(mine) == "O Romeo"
    with pytest.raises(FileNotFoundError, match="no file at"):
        data.tiny_shakespeare_path(offline / "missing.txt")


def test_missing_file_offline_says_where_to_put_it(offline):
    with pytest.raises(FileNotFoundError, match="tinyshakespeare/input.txt") as e:
        data.tiny_shakespeare_path()
    assert str(cache_dir() / "tinyshakespeare" / "input.txt") in str(e.value)
    assert not (offline / "cache").exists() or not any((offline / "cache").rglob("*"))
    with pytest.raises(FileNotFoundError, match="download=False"):
        data.tiny_shakespeare_path(download=False)


def test_download_into_cache_is_checked_and_reused(offline, monkeypatch):
    source = offline / "remote.txt"
    source.write_text("Now is the winter of our discontent")
    monkeypatch.setattr(data, "TINY_SHAKESPEARE_URL", source.as_uri())
    monkeypatch.setattr(data, "TINY_SHAKESPEARE_SHA256", hashlib.sha256(source.read_bytes()).hexdigest())
    path = data.tiny_shakespeare_path()
    assert path == cache_dir() / "tinyshakespeare" / "input.txt"
    source.unlink()  # the second call must not download again
    assert data.load_tiny_shakespeare() == "Now is the winter of our discontent"


def test_wrong_cached_copy_raises_value_error(offline):
    bad = cache_dir() / "tinyshakespeare" / "input.txt"
    bad.parent.mkdir(parents=True)
    bad.write_text("not Shakespeare")
    with pytest.raises(ValueError, match=data.TINY_SHAKESPEARE_SHA256):
        data.tiny_shakespeare_path()


def test_download_copies_a_file_url_and_checks_sha256(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(os.urandom(3 * (1 << 20) + 5))  # several chunks
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    dest = download(source.as_uri(), tmp_path / "sub" / "dest.bin", sha256=digest, progress=False)
    assert dest.read_bytes() == source.read_bytes()


def test_download_with_wrong_sha256_leaves_nothing_at_dest(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(b"abc")
    wrong = "0" * 64
    with pytest.raises(ValueError, match=f"{wrong}.*{hashlib.sha256(b'abc').hexdigest()}"):
        download(source.as_uri(), tmp_path / "out" / "dest.bin", sha256=wrong, progress=False)
    assert list((tmp_path / "out").iterdir()) == []  # no dest, no temporary file


def test_download_failure_names_the_file_to_place_for_offline_use(tmp_path):
    dest = tmp_path / "dest.bin"
    with pytest.raises(DownloadError, match=f"place it at {dest}"):
        download("file:///nonexistent/file.bin", dest, progress=False)
    assert not dest.exists()
