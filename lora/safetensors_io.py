"""A small reader and writer for the safetensors file format, with atomic writes.

The format (https://huggingface.co/docs/safetensors) is deliberately simple, which is why we can
implement it in a page instead of depending on the `safetensors` package:

    [8 bytes]  N, the header length, unsigned little-endian 64-bit integer
    [N bytes]  a JSON object: {"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets"}}
    [rest]     the raw little-endian bytes of every tensor; data_offsets = [begin, end) into this part

Nothing here unpickles anything, so a file from an untrusted source can at worst raise a ValueError.
Files are written through lora.files.atomic_write, so a crash never leaves half a file.
"""

import json
import os
import struct
import sys

import torch

from lora.files import atomic_write

# safetensors dtype names <-> torch dtypes
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # the reference implementation refuses larger headers too

if sys.byteorder != "little":  # the format is little-endian and we copy raw bytes
    raise ImportError("lora.safetensors_io needs a little-endian machine")


def save_file(tensors, path, metadata=None):
    """Write a dict of tensors to `path` in safetensors format, atomically.

    Args:
        tensors: dict name -> torch.Tensor (any device; copied to CPU, made contiguous).
        path: destination file.
        metadata: optional dict str -> str stored under "__metadata__".
    Raises:
        ValueError: a name that is not a str, a value that is not a tensor, or an unsupported dtype.
    """
    header, blobs, offset = {}, [], 0
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError(f"safetensors metadata must map str to str, got {metadata!r}")
        header["__metadata__"] = dict(metadata)
    for name in sorted(tensors):
        t = tensors[name]
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"tensor name {name!r} is not allowed; names are strings other than '__metadata__'")
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"value for {name!r} is a {type(t).__name__}, expected a torch.Tensor")
        if t.dtype not in _NAMES:
            raise ValueError(f"tensor {name!r} has dtype {t.dtype}; supported: {sorted(map(str, _NAMES))}")
        data = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)  # pad with spaces so the data starts 8-byte aligned, as the reference does
    with atomic_write(path) as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for data in blobs:
            f.write(data)


def read_header(path):
    """Return (header dict, byte offset where the data starts) after checking the header's framing."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path}: not a safetensors file (only {size} bytes, the 8-byte header length is missing)")
        (n,) = struct.unpack("<Q", raw)
        if n > min(_MAX_HEADER, size - 8):
            raise ValueError(f"{path}: header length {n} does not fit in a file of {size} bytes (truncated or corrupted)")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: header is a {type(header).__name__}, expected a JSON object")
    return header, 8 + n


def load_file(path):
    """Read a safetensors file into a dict name -> CPU tensor, checking every entry.

    Returns:
        (tensors, metadata): metadata is the "__metadata__" dict, or {} when absent.
    Raises:
        FileNotFoundError: no such file.
        ValueError: truncated or corrupted file, unknown dtype, offsets that overlap, leave gaps or
            disagree with the shape; the message names the file and the offending tensor.
    """
    header, start = read_header(path)
    with open(path, "rb") as f:
        f.seek(start)
        buf = bytearray(f.read())
    metadata = header.pop("__metadata__", {}) or {}
    entries = []
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = _DTYPES[info["dtype"]], [int(s) for s in info["shape"]], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: entry {name!r} is malformed: {info!r}") from None
        numel = 1
        for s in shape:
            if s < 0:
                raise ValueError(f"{path}: tensor {name!r} has a negative dimension in shape {shape}")
            numel *= s
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= len(buf)):
            raise ValueError(f"{path}: tensor {name!r} has offsets {[begin, end]} outside the {len(buf)}-byte data (truncated?)")
        if end - begin != nbytes:
            raise ValueError(f"{path}: tensor {name!r} spans {end - begin} bytes but {info['dtype']}{shape} needs {nbytes}")
        entries.append((begin, end, name, dtype, shape))
    entries.sort()
    cursor = 0
    for begin, end, name, *_ in entries:
        if begin != cursor:
            raise ValueError(f"{path}: tensor {name!r} starts at byte {begin}, expected {cursor} (overlap or gap)")
        cursor = end
    if cursor != len(buf):
        raise ValueError(f"{path}: {len(buf) - cursor} bytes after the last tensor (corrupted file)")
    tensors = {}
    for begin, end, name, dtype, shape in entries:
        chunk = buf[begin:end]  # a copy, so every tensor owns its memory
        t = torch.frombuffer(chunk, dtype=torch.uint8) if chunk else torch.empty(0, dtype=torch.uint8)
        tensors[name] = t.view(dtype).reshape(shape)
    return tensors, dict(metadata)
