"""Whole-or-nothing writes: the one home of "write beside, then rename into place".

A crash, a full disk or an exception half-way through a save must never leave a file or folder that
a later load would trust. Files are written to a temporary file in the same folder, flushed to disk
and renamed over the target (`atomic_write`); folders (an adapter, a pretrained model, a run's
outputs) are built in a hidden temporary sibling and renamed into place (`atomic_dir`). A rename
within one filesystem is atomic on POSIX and Windows, so a reader sees the old version or the new one.
"""

import contextlib
import json
import os
import pathlib
import shutil
import tempfile


def _umask():
    umask = os.umask(0)  # the umask can only be read by setting it; restore it at once
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside `path`; on success fsync it and rename it onto `path`.

    On any exception the temporary file is removed and `path` is left as it was.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give what a plain open() would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_json(path, obj):
    """`obj` as indented JSON in `path`, atomically."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def temp_dir(parent, name):
    """A new hidden folder in `parent` to build `name` in, with the permissions mkdir would give it."""
    pathlib.Path(parent).mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}."))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary folder beside `path`; on success it replaces `path` whole.

    The old folder (if any) is moved aside, the new one renamed into place, then the old one removed,
    so `path` always holds one complete version. On any exception `path` is left as it was.
    """
    path = pathlib.Path(path)
    tmp = temp_dir(path.parent, path.name)
    old = path.parent / f".{path.name}.old"
    try:
        yield tmp
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            if old.exists() and not path.exists():
                os.rename(old, path)  # put the previous version back
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def dir_bytes(path):
    """Bytes of all files under `path`."""
    return sum(p.stat().st_size for p in pathlib.Path(path).rglob("*") if p.is_file())
