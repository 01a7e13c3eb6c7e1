"""The offline English corpus the tiny base model is pretrained on, and checks for user corpora.

Every Python installation ships English prose: the language reference behind `help("topics")`
(pydoc_data.topics) and the docstrings at the top of the standard library's modules. We gather
them in a fixed order, so the text and its sha256 are identical on every run of the same Python.
Modules are never imported (some have side effects on import, e.g. `antigravity` opens a web
browser): each file is parsed with `ast` and only its docstring is read.
"""

import ast
import functools
import hashlib
import io
import os
import pydoc_data.topics
import sysconfig
import tokenize

from lora.checks import check_int

# folders of the standard library whose text is not documentation prose (test suites, the IDLE
# application) or not part of the standard library at all (installed packages)
SKIP_DIRS = frozenset({"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__"})
MAX_CHARS = 2_000_000  # cap; the stdlib text of CPython 3.11 is about 700k characters, all of it used


def topics_text():
    """The pydoc topics (the language reference's prose), sorted by topic name."""
    topics = pydoc_data.topics.topics
    return "\n\n".join(topics[name].strip() for name in sorted(topics))


def stdlib_py_files(root=None):
    """Sorted paths of the standard library's .py files under `root`, skipping SKIP_DIRS."""
    root = root or sysconfig.get_paths()["stdlib"]
    paths = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)  # in-place: os.walk then skips them
        paths += [os.path.join(folder, f) for f in sorted(files) if f.endswith(".py")]
    return sorted(paths, key=lambda p: os.path.relpath(p, root).split(os.sep))


def module_docstring(path):
    """The docstring of the module at `path`, read with ast.get_docstring (never imported), or None.

    Only the module's first statement is parsed: a docstring must be the first statement, and
    parsing whole files would make gathering the corpus ten times slower.
    """
    try:
        with open(path, "rb") as f:
            encoding, _ = tokenize.detect_encoding(f.readline)  # honours a coding cookie
            f.seek(0)
            source = f.read().decode(encoding)
        tree = ast.parse(_first_statement(source), filename=path)
    except (SyntaxError, ValueError, UnicodeDecodeError, OSError, tokenize.TokenError):
        return None  # a few stdlib files are deliberately unparsable (lib2to3 fixtures, bad encodings)
    doc = ast.get_docstring(tree, clean=True)
    return doc.strip() if doc and doc.strip() else None


def _first_statement(source):
    """The lines of `source` up to the end of its first logical line (comments before it included)."""
    lines = io.StringIO(source).readline
    for tok in tokenize.generate_tokens(lines):
        if tok.type == tokenize.NEWLINE:
            return "".join(source.splitlines(keepends=True)[: tok.end[0]])
    return source


@functools.lru_cache(maxsize=2)  # about 3 s to read; the run's header and the base both ask for it
def stdlib_corpus(max_chars=MAX_CHARS, root=None):
    """English text shipped with Python: pydoc topics, then module docstrings in sorted path order.

    Args:
        max_chars: keep at most this many characters (cut at a paragraph boundary).
        root: the standard library folder; default sysconfig's "stdlib" path.
    Returns:
        str, identical on every call with the same Python installation.
    """
    check_int("max_chars", max_chars)
    docs = (module_docstring(p) for p in stdlib_py_files(root))
    text = "\n\n".join((topics_text(), *filter(None, docs))) + "\n"
    if len(text) > max_chars:
        cut = text.rfind("\n\n", 0, max_chars)
        text = text[: cut if cut > 0 else max_chars] + "\n"
    return text


def sha256_text(text):
    """Hex sha256 of the UTF-8 bytes of `text`: the corpus' identity in cache keys."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_corpus_file(path):
    """Read a user's pretraining corpus, refusing files that are not usable text.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is empty, contains NUL bytes or is not UTF-8; only non-empty UTF-8
            text is allowed.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.strip():
        raise ValueError(f"corpus file {path!r} is empty; give a non-empty UTF-8 text file")
    if b"\x00" in raw:
        raise ValueError(f"corpus file {path!r} contains NUL bytes (binary?); give a UTF-8 text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"corpus file {path!r} is not UTF-8 text (byte {e.start}); give a UTF-8 text file") from None
