import os
import sys

import pytest

from minigpt.finetune.corpus import SKIP_DIRS, read_corpus_file, sha256_text, stdlib_corpus, stdlib_py_files


@pytest.fixture(scope="module")
def corpus():
    return stdlib_corpus()


def test_corpus_is_identical_on_every_call(corpus):
    assert sha256_text(stdlib_corpus()) == sha256_text(corpus)


def test_corpus_is_mostly_ascii_english(corpus):
    assert len(corpus) > 100_000
    assert sum(c.isascii() for c in corpus) / len(corpus) > 0.99
    words = corpus.lower().split()
    assert words.count("the") / len(words) > 0.02  # "the" is ~5% of English words


def test_corpus_never_imports_the_modules_it_reads(corpus):
    # both modules act when imported: `this` prints the Zen of Python, `antigravity` opens a browser
    assert "this" not in sys.modules and "antigravity" not in sys.modules


def test_test_suites_and_installed_packages_are_skipped():
    parts = {part for path in stdlib_py_files() for part in path.split(os.sep)}
    assert not parts & SKIP_DIRS


def test_max_chars_cuts_at_a_paragraph(corpus):
    short = stdlib_corpus(max_chars=10_000)
    assert len(short) <= 10_001 and corpus.startswith(short.rstrip("\n"))


@pytest.mark.parametrize("content", [b"", b"  \n", b"text\x00more", b"caf\xe9 au lait"])
def test_unusable_corpus_file_raises(tmp_path, content):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="corpus.txt"):
        read_corpus_file(path)


def test_utf8_corpus_file_is_read(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("Wherefore art thou — Romeo?\n", encoding="utf-8")
    assert read_corpus_file(path) == "Wherefore art thou — Romeo?\n"
