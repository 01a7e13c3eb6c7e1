"""Whole-or-nothing writes: the one home of "write beside, then rename into place".

A crash, a full disk or an exception half-way through a save must never leave a file or folder that
a later load would trust, and a save must never delete or move something it did not write. Files are
written to a temporary file in the same folder, flushed to disk and renamed over the target
(`atomic_write`); folders (an adapter, a run's outputs) are built in a hidden temporary sibling and
renamed into place (`atomic_dir`); several files and folders that belong together are staged first
and renamed one after the other at the end (`staged_writes`), with Ctrl-C held back during those
renames, so an interrupt never lands between them. A rename within one filesystem is atomic on POSIX
and Windows, so a reader sees the old version or the new one.

Nothing here replaces a regular file by a folder or a folder by a file: that is refused, naming the path.
"""

import contextlib
import json
import os
import pathlib
import shutil
import signal
import tempfile
import threading


def _umask():
    umask = os.umask(0)  # the umask can only be read by setting it; restore it at once
    os.umask(umask)
    return umask


def check_not_read_only(path):
    """Raise PermissionError if the existing folder or file `path` is read-only.

    A path without any write permission bit counts as read-only even for root (who may write anyway):
    a folder the user marked read-only is not written into.
    """
    path = pathlib.Path(path)
    if path.exists() and (not os.access(path, os.W_OK) or not path.stat().st_mode & 0o222):
        raise PermissionError(f"{os.fspath(path)!r} is read-only; nothing was written")


@contextlib.contextmanager
def _signals_held():
    """Hold back Ctrl-C (SIGINT) and SIGTERM while the body runs; one that arrives is re-raised right after.

    Python's handlers always run in the main thread, whichever thread the operating system picked to
    receive the signal, so replacing them (rather than masking the signal in one thread) holds back
    every Ctrl-C. Only the main thread may set handlers; elsewhere the body runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []

    def remember(signum, frame):
        received.append(signum)

    sigs = [s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None]
    old = {sig: signal.signal(sig, remember) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if received:
            signal.raise_signal(received[0])  # now, with the caller's handler: KeyboardInterrupt for Ctrl-C


def _fsync_file(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


class _Stage:
    """Files and folders written aside, renamed into place by commit(); see staged_writes."""

    def __init__(self):
        self.files, self.folders = [], []  # (temporary, final) pairs

    def file(self, path):
        """A new temporary file beside `path` (returned as a Path) that commit() renames onto `path`."""
        path = pathlib.Path(path)
        if path.is_dir():
            raise ValueError(f"{os.fspath(path)!r} is a folder; a file cannot replace it. Nothing was changed")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give what a plain open() would
        self.files.append((pathlib.Path(tmp), path))
        return pathlib.Path(tmp)

    def folder(self, path):
        """A new hidden temporary folder beside `path` that commit() puts in place of `path`, whole."""
        path = pathlib.Path(path)
        if path.exists() and not path.is_dir():
            raise ValueError(f"{os.fspath(path)!r} is a file; a folder cannot replace it. Nothing was changed")
        tmp = temp_dir(path.parent, path.name)
        self.folders.append((tmp, path))
        return tmp

    def commit(self):
        for tmp, _ in self.files:
            _fsync_file(tmp)
        with _signals_held():
            for tmp, path in self.files:
                os.replace(tmp, path)
            for tmp, path in self.folders:
                old = path.parent / f".{path.name}.old"
                shutil.rmtree(old, ignore_errors=True)
                if path.exists():
                    os.rename(path, old)
                try:
                    os.rename(tmp, path)
                except BaseException:
                    if old.exists() and not path.exists():
                        os.rename(old, path)  # put the previous version back
                    raise
                shutil.rmtree(old, ignore_errors=True)

    def cleanup(self):
        for tmp, _ in self.files:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        for tmp, _ in self.folders:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged_writes():
    """Yield a stage: `stage.file(path)` and `stage.folder(path)` give temporary places to write to.

    When the body succeeds, every staged file and folder is renamed into place, one after the other,
    with SIGINT/SIGTERM held back during the renames; on any exception nothing is renamed, every
    temporary is removed, and the targets are left exactly as they were.
    """
    stage = _Stage()
    try:
        yield stage
        stage.commit()
    finally:
        stage.cleanup()


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside `path`; on success fsync it and rename it onto `path`.

    On any exception the temporary file is removed and `path` is left as it was.
    """
    with staged_writes() as stage:
        with open(stage.file(path), mode) as f:
            yield f


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
    """Yield a temporary folder beside `path`; on success it replaces the folder `path` whole.

    For folders this code owns (a run's adapter/ and merged/): whatever `path` held is replaced. The
    old folder (if any) is moved aside, the new one renamed into place, then the old one removed, so
    `path` always holds one complete version. On any exception `path` is left as it was.
    Raises:
        ValueError: `path` is a regular file (it is never replaced by a folder).
    """
    with staged_writes() as stage:
        yield stage.folder(path)


def is_hidden_temporary(name):
    """True for the names this module gives its temporaries (".<name>.<random>[.tmp]", ".<name>.old")."""
    return name.startswith(".") and (name.endswith((".tmp", ".old")) or name.count(".") >= 2)


def dir_bytes(path):
    """Bytes of all files under `path`."""
    return sum(p.stat().st_size for p in pathlib.Path(path).rglob("*") if p.is_file())

