"""What every `python -m minigpt.<command>` shares: one-line errors, and outputs checked before any work.

A command's mistakes are the user's to fix, so they get one line on stderr and exit status 2, the
status argparse gives a bad flag:

    error: threads=0: must be a positive integer

Expected errors are ValueError (a bad setting or a bad file: the library's message names it),
OSError (a missing file, a full disk, a folder that cannot be written) and running out of memory.
Ctrl-C (SIGINT) prints one line and exits 130 (128 + SIGINT), as shells report it; every write a
command makes goes through a temporary file or folder that is renamed into place, so an interrupted
write leaves the previous version. Anything else is a bug and keeps its traceback.

Outputs are checked at the door (check_writable): a path under a regular file, a folder where a file
must go (or the reverse), or a place this process cannot write into is refused before a model is
built or a step is taken, instead of failing when the first file is written.
"""

import contextlib
import os
import pathlib
import sys
import tempfile

import torch

EXIT_USAGE = 2       # argparse's status for a bad command line; ours for every expected error
EXIT_INTERRUPT = 130  # 128 + SIGINT
EXPECTED = (ValueError, OSError, MemoryError, torch.OutOfMemoryError)


def one_line(error):
    """An exception as one line of text: its message with line breaks folded, or its type when it has none."""
    text = " ".join(str(error).split())
    if isinstance(error, OSError) and error.strerror and error.filename:
        text = f"{error.filename}: {error.strerror}"  # "[Errno 28] ..." says less than the path does
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        text = f"out of memory: {text}" if text else "out of memory"
    return text or type(error).__name__


@contextlib.contextmanager
def one_line_errors(interrupted="interrupted"):
    """Turn an expected error inside the block into `error: <message>` on stderr and SystemExit(2).

    Ctrl-C becomes `<interrupted>` on stderr and SystemExit(130). Other exceptions pass through
    with their traceback: they are bugs.
    """
    try:
        yield
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPT) from None
    except EXPECTED as e:
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USAGE) from None


def _existing_ancestor(path):
    """The nearest of path, its parent, its parent's parent, ... that exists."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return pathlib.Path(path.anchor or ".")


def check_writable(name, path, folder):
    """Refuse an output `path` that could not be written, before any work: raise naming `name`.

    folder=True: path is (or will be) a folder; False: a file. Nothing is created; a probe file is
    made and removed at once in the nearest existing folder, because only an attempt tells whether a
    place is writable (os.access says yes to root on read-only mounts and to anyone on /proc).
    Raises:
        ValueError: path, or a folder it would be made in, is a regular file; or a file path is a folder.
        PermissionError: nothing can be created where path would go.
    """
    path = pathlib.Path(os.path.abspath(os.fspath(path)))
    existing = _existing_ancestor(path)
    if existing != path and not existing.is_dir():
        raise ValueError(f"{name}={os.fspath(path)!r}: {os.fspath(existing)!r} is a file, so nothing can be "
                         "written under it; give a path in a folder")
    if existing == path and folder and not path.is_dir():
        raise ValueError(f"{name}={os.fspath(path)!r} is a file; give a folder")
    if existing == path and not folder and path.is_dir():
        raise ValueError(f"{name}={os.fspath(path)!r} is a folder; give a file name")
    where = existing if existing.is_dir() else existing.parent
    try:
        fd, probe = tempfile.mkstemp(dir=where, prefix=".minigpt-write-check-")
    except OSError as e:
        raise PermissionError(f"{name}={os.fspath(path)!r}: cannot write in {os.fspath(where)!r} "
                              f"({e.strerror or e})") from None
    os.close(fd)
    os.remove(probe)
