"""Where files live, and how one is fetched: streamed, checked, and written atomically.

Two environment variables decide the locations:
    MINIGPT_DATA_DIR   a folder of files placed by hand for offline use, e.g. tinyshakespeare/input.txt,
                       gpt2/vocab.bpe, gpt2/encoder.json (optional, never written to)
    MINIGPT_CACHE_DIR  where downloads and pretrained models are kept (default ~/.cache/minigpt)

`download` writes through lora.io.safetensors_io.atomic_write, so an interrupted or failed download (network
error, wrong checksum) leaves nothing at the destination, and a later call simply starts again.
"""

import hashlib
import http.client
import os
import pathlib
import urllib.error
import urllib.request

from tqdm.auto import tqdm

from lora.io.files import atomic_write

_CHUNK = 1 << 20  # 1 MiB per read: a smooth progress bar without a syscall per byte


class DownloadError(OSError):
    """A file could not be fetched (no network, HTTP error); the message says where to put it by hand."""


def cache_dir():
    """The cache folder: $MINIGPT_CACHE_DIR, else ~/.cache/minigpt. It is created only when written to."""
    return pathlib.Path(os.environ.get("MINIGPT_CACHE_DIR") or "~/.cache/minigpt").expanduser()


def data_dir():
    """The folder of hand-placed data files, $MINIGPT_DATA_DIR, or None when the variable is unset or empty."""
    value = os.environ.get("MINIGPT_DATA_DIR")
    return pathlib.Path(value).expanduser() if value else None


def sha256_file(path):
    """Hex sha256 of a file, read in chunks so a large model file never sits in memory twice."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url, dest, sha256=None, desc=None, progress=True):
    """Fetch `url` into `dest` with a progress bar; check its sha256 when one is given.

    The bytes are hashed while they stream, so the check costs no second pass over the file.

    Args:
        url: http(s):// or file:// URL.
        dest: destination path; parent folders are created.
        sha256: expected lowercase hex digest, or None to skip the check.
        desc: label of the progress bar (default: the file name).
        progress: show a tqdm bar on stderr.
    Returns:
        pathlib.Path of the written file.
    Raises:
        DownloadError (an OSError): the URL could not be read; the message names the file to place
            at `dest` to work offline.
        ValueError: the sha256 of the downloaded bytes differs from `sha256`; nothing is left at `dest`.
    """
    dest = pathlib.Path(dest)
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                       desc=desc or dest.name, disable=not progress)
            with bar, atomic_write(dest) as f:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    h.update(chunk)
                    f.write(chunk)
                    bar.update(len(chunk))
                # raising inside atomic_write discards the temporary file: dest is never half-written
                if sha256 is not None and h.hexdigest() != sha256.lower():
                    raise ValueError(f"sha256 mismatch for {url}: expected {sha256.lower()}, got {h.hexdigest()}; "
                                     f"the download was discarded and nothing was written to {dest}")
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"could not download {url} ({reason}). To work offline, download that file "
                            f"elsewhere and place it at {dest}") from e
    return dest
