"""Tokenizers: text <-> lists of integer ids. Three of them, all with .name, .vocab_size, .encode, .decode.

    byte  UTF-8 bytes, vocabulary 256. Any text encodes, nothing is ever out of vocabulary; the default
          of the course's offline models.
    char  nanoGPT's shakespeare_char: the vocabulary is the sorted set of characters of a training text
          (65 for tiny Shakespeare). Compact, but a character it never saw cannot be encoded.
    gpt2  GPT-2's byte-level BPE (Radford et al., 2019), 50,257 tokens, through tiktoken. Built from the
          two published files vocab.bpe (the merges) and encoder.json (token -> id) in a local folder, so
          it works offline; tiktoken's own download is used only when no local files are found.

`to_dict()` / `tokenizer_from_dict()` store a tokenizer in a checkpoint (the char vocabulary must travel
with the model: a different text gives different ids).
"""

import numbers
import pathlib

import tiktoken
import tiktoken.load
import torch

from minigpt.download import data_dir, sha256_file

# tiktoken's own checksums for GPT-2's published BPE files (tiktoken_ext/openai_public.py)
GPT2_FILE_SHA256 = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
GPT2_EOT = "<|endoftext|>"
GPT2_EOT_ID = 50256  # the last id: 50,000 merges + 256 byte tokens come first
# GPT-2's pre-tokenizer regex from openai/gpt-2 src/encoder.py, used when tiktoken_ext is not importable
_GPT2_PAT_STR = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _as_ids(ids):
    """Accept a list/tuple of ints or a 1-D integer tensor; return a list of Python ints.

    Nothing is coerced: 3.0, "3" and True are refused, since int() would turn them into some id.
    """
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1 or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"expected a 1-D integer tensor of ids, got shape {tuple(ids.shape)} {ids.dtype}")
        return ids.tolist()
    if not isinstance(ids, (list, tuple, range)):
        raise ValueError(f"ids must be a list or tuple of ints or a 1-D integer tensor, got {type(ids).__name__}")
    for i in ids:
        if not isinstance(i, numbers.Integral) or isinstance(i, bool):
            raise ValueError(f"token id {i!r} is a {type(i).__name__}; ids are integers")
    return [int(i) for i in ids]


def _check_text(text):
    if not isinstance(text, str):
        raise ValueError(f"encode needs a str, got {type(text).__name__}: {text!r:.80}")
    return text


def _check_range(ids, vocab_size, name):
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"{name} tokenizer: id {bad[0]} is outside the vocabulary [0, {vocab_size})")


class ByteTokenizer:
    """UTF-8 bytes as tokens: id = byte value, vocab_size 256. No out-of-vocabulary text exists."""

    name = "byte"
    vocab_size = 256

    def encode(self, text):
        return list(_check_text(text).encode("utf-8"))

    def decode(self, ids):
        """Ids -> text. A byte sequence cut mid-character (common when sampling) decodes to U+FFFD."""
        ids = _as_ids(ids)
        _check_range(ids, self.vocab_size, self.name)
        return bytes(ids).decode("utf-8", errors="replace")

    def to_dict(self):
        return {"name": self.name}


class CharTokenizer:
    """nanoGPT's character-level tokenizer: id = position of the character in a sorted vocabulary."""

    name = "char"

    def __init__(self, chars):
        chars = list(chars)
        if not chars or any(not isinstance(c, str) or len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer needs a non-empty sequence of distinct single characters")
        self.chars = chars
        self.vocab_size = len(chars)
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text):
        """Vocabulary = sorted(set(text)), as nanoGPT's data/shakespeare_char/prepare.py builds it."""
        if not _check_text(text):
            raise ValueError("CharTokenizer.from_text needs a non-empty text")
        return cls(sorted(set(text)))

    def encode(self, text):
        try:
            return [self.stoi[c] for c in _check_text(text)]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in this CharTokenizer's {self.vocab_size}-character "
                             "vocabulary; use the byte tokenizer for arbitrary text") from None

    def decode(self, ids):
        ids = _as_ids(ids)
        _check_range(ids, self.vocab_size, self.name)
        return "".join(self.chars[i] for i in ids)

    def to_dict(self):
        return {"name": self.name, "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, d):
        if d.get("name") != cls.name or not isinstance(d.get("chars"), str):
            raise ValueError(f"not a CharTokenizer dict: {d!r}")
        return cls(d["chars"])


class GPT2Tokenizer:
    """GPT-2's BPE through a tiktoken.Encoding; build one with `gpt2_tokenizer(local_dir)`.

    `encode` treats the text "<|endoftext|>" as ordinary text (tiktoken's encode_ordinary, as nanoGPT's
    prepare.py does); append `eot_token` yourself to mark document boundaries.
    """

    name = "gpt2"

    def __init__(self, encoding):
        self.encoding = encoding
        self.vocab_size = encoding.n_vocab  # 50257
        self.eot_token = encoding.eot_token  # 50256

    def encode(self, text):
        return self.encoding.encode_ordinary(_check_text(text))

    def decode(self, ids):
        """Ids -> text; bytes that are not valid UTF-8 (a token split mid-character) become U+FFFD."""
        ids = _as_ids(ids)
        _check_range(ids, self.vocab_size, self.name)
        return self.encoding.decode(ids, errors="replace")

    def to_dict(self):
        return {"name": self.name}


def _gpt2_pat_str():
    try:  # tiktoken's current spelling of the same regex (possessive quantifiers, faster)
        from tiktoken_ext.openai_public import r50k_pat_str
        return r50k_pat_str
    except ImportError:
        return _GPT2_PAT_STR


def _find_gpt2_dir(local_dir):
    """The folder holding vocab.bpe and encoder.json: `local_dir`, else $MINIGPT_DATA_DIR/gpt2, else None."""
    if local_dir is not None:
        local_dir = pathlib.Path(local_dir).expanduser()
        missing = [f for f in GPT2_FILE_SHA256 if not (local_dir / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{local_dir} lacks GPT-2's BPE file(s) {missing}; it needs vocab.bpe and "
                                    "encoder.json from https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/")
        return local_dir
    root = data_dir()
    if root is not None and all((root / "gpt2" / f).is_file() for f in GPT2_FILE_SHA256):
        return root / "gpt2"
    return None


def gpt2_tokenizer(local_dir=None):
    """GPT-2's BPE tokenizer, offline when the two BPE files can be found locally.

    Looks in `local_dir`, then in $MINIGPT_DATA_DIR/gpt2; only when neither holds the files does it call
    tiktoken.get_encoding("gpt2"), which downloads them (or uses tiktoken's own cache). Note that tiktoken
    keeps a copy of files it reads, local ones included, in $TIKTOKEN_CACHE_DIR (default <tmp>/data-gym-cache).

    Raises:
        FileNotFoundError: `local_dir` was given but lacks vocab.bpe or encoder.json.
        ValueError: a local file's sha256 differs from the published one (the message names both hashes).
    """
    folder = _find_gpt2_dir(local_dir)
    if folder is None:
        return GPT2Tokenizer(tiktoken.get_encoding("gpt2"))
    for fname, expected in GPT2_FILE_SHA256.items():
        actual = sha256_file(folder / fname)
        if actual != expected:
            raise ValueError(f"{folder / fname} has sha256 {actual}, but GPT-2's published {fname} has {expected}")
    # tiktoken turns the data-gym format (merges + encoder) into its rank table and checks the two agree
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(folder / "vocab.bpe"), encoder_json_file=str(folder / "encoder.json"),
        vocab_bpe_hash=GPT2_FILE_SHA256["vocab.bpe"], encoder_json_hash=GPT2_FILE_SHA256["encoder.json"])
    encoding = tiktoken.Encoding(name="gpt2", pat_str=_gpt2_pat_str(), mergeable_ranks=ranks,
                                 special_tokens={GPT2_EOT: GPT2_EOT_ID}, explicit_n_vocab=GPT2_EOT_ID + 1)
    return GPT2Tokenizer(encoding)


TOKENIZERS = ("byte", "char", "gpt2")


def get_tokenizer(name, text=None, local_dir=None):
    """A tokenizer by name: "byte", "char" (needs `text` to build its vocabulary) or "gpt2" (see gpt2_tokenizer)."""
    if name == "byte":
        return ByteTokenizer()
    if name == "char":
        if text is None:
            raise ValueError('get_tokenizer("char") needs text=... to build its vocabulary from')
        return CharTokenizer.from_text(text)
    if name == "gpt2":
        return gpt2_tokenizer(local_dir)
    raise ValueError(f"unknown tokenizer {name!r}; choose one of {list(TOKENIZERS)}")


def tokenizer_from_dict(d, local_dir=None):
    """Rebuild a tokenizer stored with `to_dict()` (e.g. in a checkpoint)."""
    name = d.get("name") if isinstance(d, dict) else None
    if name == "char":
        return CharTokenizer.from_dict(d)
    if name in ("byte", "gpt2"):
        return get_tokenizer(name, local_dir=local_dir)
    raise ValueError(f"cannot rebuild a tokenizer from {d!r}; its 'name' must be one of {list(TOKENIZERS)}")
