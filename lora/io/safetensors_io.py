"""A small reader and writer for the safetensors file format, with atomic writes.

The format (https://huggingface.co/docs/safetensors) is deliberately simple, which is why we can
implement it in a page instead of depending on the `safetensors` package:

    [8 bytes]  N, the header length, unsigned little-endian 64-bit integer
    [N bytes]  a JSON object: {"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets"}}
    [rest]     the raw little-endian bytes of every tensor; data_offsets = [begin, end) into this part

Nothing here unpickles anything, so a file from an untrusted source can at worst raise a ValueError.
Files are written through lora.io.files.atomic_write, so a crash never leaves half a file.
"""

import json
import math
import os
import struct
import sys

import torch

from lora.checks import is_int
from lora.io.files import atomic_write

# safetensors dtype names <-> torch dtypes
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # the reference implementation refuses larger headers too

if sys.byteorder != "little":  # the format is little-endian and we copy raw bytes
    raise ImportError("lora.io.safetensors_io needs a little-endian machine")


def save_file(tensors, path, metadata=None):
    """Write a dict of tensors to `path` in safetensors format, atomically.

    Args:
        tensors: dict name -> torch.Tensor (any device; copied to CPU, made contiguous).
        path: destination file.
        metadata: optional dict str -> str stored under "__metadata__".
    Raises:
        ValueError: a name that is not a str, a value that is not a tensor, or an unsupported dtype.
    """
    chunks = serialize(tensors, metadata)  # every check before the file is opened
    with atomic_write(path) as f:
        for chunk in chunks:
            f.write(chunk)


def serialize(tensors, metadata=None):
    """The bytes of a safetensors file holding `tensors`, as a list of chunks (see save_file)."""
    header, blobs, offset = {}, [], 0
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError(f"safetensors metadata must map str to str, got {metadata!r}")
        if metadata:
            header["__metadata__"] = dict(metadata)
    if not isinstance(tensors, dict):
        raise ValueError(f"tensors must be a dict name -> torch.Tensor, got {type(tensors).__name__}")
    bad = [name for name in tensors if not isinstance(name, str) or name == "__metadata__"]
    if bad:
        raise ValueError(f"tensor name {bad[0]!r} is not allowed; names are strings other than '__metadata__'")
    for name in sorted(tensors):
        t = tensors[name]
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
    return [struct.pack("<Q", len(head)), head, *blobs]


def _no_duplicates(pairs):
    """json object hook: a key given twice would let the second silently hide the first."""
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def read_header(path):
    """Return (header dict, byte offset where the data starts) after checking the header's framing.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a header that does not fit the file, is not a JSON object (deeply nested JSON
            included: the parser's RecursionError is turned into this), repeats a key, or has a
            `__metadata__` that is not a str -> str object.
    """
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
            header = json.loads(f.read(n).decode("utf-8"), object_pairs_hook=_no_duplicates)
        except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
            raise ValueError(f"{path}: header is not valid JSON ({e})") from None
        except RecursionError:
            raise ValueError(f"{path}: header is JSON nested too deeply to be a safetensors header") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: header is a {type(header).__name__}, expected a JSON object")
    metadata = header.get("__metadata__") or {}  # the reference reads null as no metadata
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"{path}: __metadata__={metadata!r} must be an object mapping strings to strings")
    return header, 8 + n


def _entry(path, name, info):
    """One header entry -> (dtype, shape, begin, end), refusing every loose type.

    A shape [2.9] or [true] is refused, not read as 2 or 1: a header is data from a file, and
    coercing it would load a tensor of another size than the file describes.
    """
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise ValueError(f"{path}: entry {name!r} is malformed: {info!r}; "
                         "expected an object with 'dtype', 'shape' and 'data_offsets'")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise ValueError(f"{path}: tensor {name!r} has dtype {dtype!r}; supported: {sorted(_DTYPES)}")
    if not isinstance(shape, list) or not all(is_int(s) and s >= 0 for s in shape):
        raise ValueError(f"{path}: tensor {name!r} has shape {shape!r}; a shape is a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_int(o) for o in offsets)):
        raise ValueError(f"{path}: tensor {name!r} has data_offsets {offsets!r}; expected [begin, end] integers")
    return _DTYPES[dtype], shape, offsets[0], offsets[1]


def header_shapes(path):
    """{name: (dtype, shape)} of every tensor in the file, read from its checked header only.

    Lets a caller compare sizes with what it expects before it allocates anything or reads the data.
    """
    header, _ = read_header(path)
    return {name: _entry(path, name, info)[:2] for name, info in header.items() if name != "__metadata__"}


def load_file(path):
    """Read a safetensors file into a dict name -> CPU tensor, checking every entry.

    Returns:
        (tensors, metadata): metadata is the "__metadata__" dict, or {} when absent.
    Raises:
        FileNotFoundError: no such file.
        ValueError: truncated or corrupted file, unknown dtype, a shape or offset that is not an
            integer, offsets that overlap, leave gaps or disagree with the shape; the message names
            the file and the offending tensor.
    """
    header, start = read_header(path)
    with open(path, "rb") as f:
        f.seek(start)
        buf = bytearray(f.read())
    metadata = header.pop("__metadata__", None) or {}
    entries = []
    for name, info in header.items():
        dtype, shape, begin, end = _entry(path, name, info)
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if not 0 <= begin <= end <= len(buf):
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


def check_finite(tensors, path):
    """Raise ValueError naming the first floating-point tensor of `tensors` with a NaN or inf, and `path`.

    For loaders: a weight file from elsewhere may hold non-finite values, which would otherwise flow
    silently into every output computed from them.
    """
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            bad = (~torch.isfinite(t)).sum().item()
            raise ValueError(f"{os.fspath(path)}: tensor {name!r} has {bad} non-finite value(s) (NaN or inf)")
    return tensors
