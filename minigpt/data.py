"""Tiny Shakespeare and random training batches, as nanoGPT's data/shakespeare*/prepare.py and train.py do.

Tiny Shakespeare (Karpathy's char-rnn corpus, 1,115,394 characters) is found, in this order, at an
explicit path, at $MINIGPT_DATA_DIR/tinyshakespeare/input.txt, in the cache, or downloaded into the
cache from its canonical URL and checked against its sha256.

Shape legend:
    N  number of tokens in the corpus       B  batch size       T  block size (context length)
"""

import pathlib

import torch

# renamed: the `download` argument of tiny_shakespeare_path would shadow the function
from lora.checks import check_float, check_int
from minigpt.download import DownloadError, cache_dir, data_dir, sha256_file
from minigpt.download import download as download_file
from minigpt.token_ids import check_token_ids

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINY_SHAKESPEARE_CHARS = 1_115_394
_RELPATH = ("tinyshakespeare", "input.txt")


def _verified(path):
    # a known file at a known place must be the real one: a wrong copy would silently change every loss
    actual = sha256_file(path)
    if actual != TINY_SHAKESPEARE_SHA256:
        raise ValueError(f"{path} has sha256 {actual}, expected {TINY_SHAKESPEARE_SHA256} (tiny Shakespeare); "
                         "delete or replace it")
    return path


def tiny_shakespeare_path(path=None, download=True):
    """Locate tiny Shakespeare's input.txt, downloading it into the cache if it is nowhere else.

    Args:
        path: an explicit file; used as is (any text file works, it is not checksummed).
        download: allow the download when no local copy exists.
    Returns:
        pathlib.Path of the file.
    Raises:
        FileNotFoundError: `path` does not exist, or no local copy exists and the download is not
            allowed or fails (offline); the message says where to put the file.
        ValueError: the copy in $MINIGPT_DATA_DIR or the cache has the wrong sha256.
    """
    if path is not None:
        path = pathlib.Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"tiny Shakespeare: no file at {path}")
        return path
    root = data_dir()
    if root is not None and root.joinpath(*_RELPATH).is_file():
        return _verified(root.joinpath(*_RELPATH))
    cached = cache_dir().joinpath(*_RELPATH)
    if cached.is_file():
        return _verified(cached)
    where = (f"download {TINY_SHAKESPEARE_URL} and put it at {cached}, or at "
             "$MINIGPT_DATA_DIR/tinyshakespeare/input.txt, or pass its path")
    if not download:
        raise FileNotFoundError(f"tiny Shakespeare not found and download=False: {where}")
    try:
        return download_file(TINY_SHAKESPEARE_URL, cached, sha256=TINY_SHAKESPEARE_SHA256, desc="tiny shakespeare")
    except DownloadError as e:
        raise FileNotFoundError(f"tiny Shakespeare not found and the download failed ({e.__cause__}): {where}") from e


def load_tiny_shakespeare(path=None):
    """The corpus as one str (see tiny_shakespeare_path for where it is looked for).

    Raises:
        FileNotFoundError: see tiny_shakespeare_path.
        ValueError: the file is not UTF-8 text (named, with the first bad byte's offset).
    """
    path = tiny_shakespeare_path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); give a text file") from None


def encode_text(tokenizer, text):
    """Text -> (N,) int64 tensor of token ids."""
    return torch.tensor(tokenizer.encode(text), dtype=torch.long)


def split_train_val(ids, train_frac=0.9):
    """First train_frac for training, the rest for validation, as nanoGPT's prepare.py does (90/10).

    A contiguous split, not a shuffled one: the validation text is text the model never saw, and our val
    losses compare with nanoGPT's published ones. `ids` may be a (N,) tensor of token ids or a str. For
    GPT-2 BPE, nanoGPT splits the text first and encodes each part (301,966 / 36,059 tokens for tiny
    Shakespeare); pass the str to get exactly that. For characters both orders give the same split.

    Returns:
        (train, val): slices of `ids` (views for a tensor), lengths int(N * train_frac) and the rest.
    """
    check_float("train_frac", train_frac, 0.0, 1.0)
    if not isinstance(ids, str) and not (isinstance(ids, torch.Tensor) and ids.dim() == 1):
        raise ValueError(f"split_train_val needs a str or a 1-D tensor of token ids, got {type(ids).__name__}")
    n = int(len(ids) * train_frac)
    return ids[:n], ids[n:]


def get_batch(data, batch_size, block_size, generator=None, device="cpu", vocab_size=None):
    """B random windows of T+1 tokens from `data`: inputs x and next-token targets y = x shifted by one.

    Offsets are drawn uniformly from [0, N - T) with `generator` (a CPU torch.Generator), as nanoGPT's
    get_batch does, so a seeded generator gives the same batches on every run and device.

    Args:
        data: (N,) integer tensor of token ids with N > block_size.
        batch_size, block_size: B and T.
        generator: optional torch.Generator for the offsets.
        device: where x and y are put.
        vocab_size: if given, every id of the batch must be in [0, vocab_size) (minigpt.token_ids),
            checked on `data`'s device before the copy: the one place a training step's ids are read.
    Returns:
        (x, y): two (B, T) int64 tensors with y[:, t] == x[:, t + 1] for t < T - 1.
    Raises:
        ValueError: non-positive sizes, data too short for one window, or an id outside the vocabulary.
    """
    check_int("batch_size", batch_size)
    check_int("block_size", block_size)
    if not isinstance(data, torch.Tensor) or data.dim() != 1 or data.is_floating_point():
        raise ValueError("get_batch needs a 1-D integer tensor of token ids")
    if len(data) <= block_size:
        raise ValueError(f"data has {len(data)} tokens; a window of block_size={block_size} needs at least "
                         f"{block_size + 1} (inputs plus one shifted target)")
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # (B,)
    offsets = ix[:, None] + torch.arange(block_size + 1)  # (B, T+1)
    window = data[offsets].long()  # (B, T+1)
    if vocab_size is not None:
        check_token_ids(window, vocab_size, "data")
    x, y = window[:, :-1], window[:, 1:]  # (B, T) each, y one token ahead of x
    return x.contiguous().to(device), y.contiguous().to(device)
