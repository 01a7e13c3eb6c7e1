"""Whole-or-nothing writes (lora/io/files.py): a failure or Ctrl-C leaves the old version, nothing else is touched."""

import os
import signal
import sys

import pytest

import lora.io.files
from lora.io.files import atomic_dir, atomic_write, check_not_read_only, staged_writes


def tree(path):
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    (tmp_path / "f").write_text("old")
    with atomic_write(tmp_path / "f", "w") as f:
        f.write("new")
    assert tree(tmp_path) == {"f": b"new"}


def test_a_failed_atomic_write_leaves_the_old_file(tmp_path):
    (tmp_path / "f").write_text("old")
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "f", "w") as f:
        f.write("half")
        raise RuntimeError("disk full")
    assert tree(tmp_path) == {"f": b"old"}


def test_atomic_dir_refuses_to_replace_a_regular_file(tmp_path):
    (tmp_path / "out").write_text("a user's file")
    with pytest.raises(ValueError, match=r"out' is a file; a folder cannot replace it"), atomic_dir(tmp_path / "out"):
        pass
    assert tree(tmp_path) == {"out": b"a user's file"}


def test_a_file_is_never_written_over_a_folder(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="is a folder"), atomic_write(tmp_path / "d"):
        pass
    assert tree(tmp_path) == {"d": None}


def test_staged_writes_rename_everything_or_nothing(tmp_path):
    (tmp_path / "a").write_text("old a")
    with pytest.raises(RuntimeError), staged_writes() as stage:
        stage.file(tmp_path / "a").write_text("new a")
        (stage.folder(tmp_path / "d") / "x").write_text("x")
        raise RuntimeError("the second write failed")
    assert tree(tmp_path) == {"a": b"old a"}
    with staged_writes() as stage:
        stage.file(tmp_path / "a").write_text("new a")
        (stage.folder(tmp_path / "d") / "x").write_text("x")
    assert tree(tmp_path) == {"a": b"new a", "d": None, "d/x": b"x"}


def test_ctrl_c_during_the_renames_arrives_after_all_of_them(tmp_path, monkeypatch, python_sigint_handler):
    renamed = []
    real_replace = os.replace

    def replace_then_interrupt(src, dst):
        if not renamed:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C between the first and the second rename
        real_replace(src, dst)
        renamed.append(dst)

    monkeypatch.setattr(lora.io.files.os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt), staged_writes() as stage:
        stage.file(tmp_path / "config").write_text("new config")
        stage.file(tmp_path / "weights").write_text("new weights")
    assert tree(tmp_path) == {"config": b"new config", "weights": b"new weights"}  # both, never one


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_a_folder_without_write_permission_counts_as_read_only_even_for_root(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="read-only"):
            check_not_read_only(tmp_path / "ro")
    finally:
        (tmp_path / "ro").chmod(0o755)
    check_not_read_only(tmp_path / "ro")  # writable again: no error
