"""minigpt/cli.py, what every command shares: one-line errors with exit 2, and outputs checked before any work."""

import errno
import os
import sys

import pytest
import torch

from minigpt.cli import check_writable, one_line, one_line_errors


def run(error, capsys):
    """(exit status, stderr) when `error` is raised inside one_line_errors."""
    with pytest.raises(SystemExit) as stop:
        with one_line_errors("interrupted: all files are whole"):
            raise error
    return stop.value.code, capsys.readouterr().err


@pytest.mark.parametrize("error, line", [
    (ValueError("rank=0: must be a positive integer"), "error: rank=0: must be a positive integer\n"),
    (ValueError("a message\non two lines"), "error: a message on two lines\n"),
    (FileNotFoundError("no checkpoint at run/ckpt.pt"), "error: no checkpoint at run/ckpt.pt\n"),
    (OSError(errno.ENOSPC, "No space left on device", "run/ckpt.pt"), "error: run/ckpt.pt: No space left on device\n"),
    (PermissionError(errno.EACCES, "Permission denied", "/etc/x"), "error: /etc/x: Permission denied\n"),
    (MemoryError(), "error: out of memory\n"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
     "error: out of memory: CUDA out of memory. Tried to allocate 2.00 GiB\n"),
])
def test_an_expected_error_is_one_line_and_exit_2(capsys, error, line):
    assert run(error, capsys) == (2, line)


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    assert run(KeyboardInterrupt(), capsys) == (130, "interrupted: all files are whole\n")


@pytest.mark.parametrize("bug", [TypeError("unsupported operand"), KeyError("x"), AssertionError("invariant")])
def test_a_bug_keeps_its_traceback(capsys, bug):
    with pytest.raises(type(bug)):
        with one_line_errors():
            raise bug
    assert capsys.readouterr().err == ""


def test_one_line_of_an_exception_without_a_message_is_its_type():
    assert one_line(ValueError()) == "ValueError"


def _listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_writable_output_passes_and_nothing_is_created(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "bench.json").write_text("{}")
    before = _listing(tmp_path)
    check_writable("out", tmp_path / "run", folder=True)               # an existing folder
    check_writable("out", tmp_path / "a" / "b" / "run", folder=True)   # folders still to be made
    check_writable("out", tmp_path / "bench.json", folder=False)       # a file to be replaced
    check_writable("out", tmp_path / "new" / "bench.json", folder=False)
    assert _listing(tmp_path) == before  # the probe file is gone, no folder was made


def test_an_output_under_a_file_or_of_the_wrong_kind_is_refused_naming_it(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(ValueError, match=r"out='.*notes.txt/run/deeper': '.*notes.txt' is a file, so nothing"):
        check_writable("out", notes / "run" / "deeper", folder=True)
    with pytest.raises(ValueError, match=r"notes.txt' is a file; give a folder"):
        check_writable("out", notes, folder=True)
    with pytest.raises(ValueError, match=r"metrics_path='.*' is a folder; give a file name"):
        check_writable("metrics_path", tmp_path, folder=False)
    assert notes.read_text() == "mine" and _listing(tmp_path) == ["notes.txt"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_a_place_nothing_can_be_created_in_is_refused():
    # /proc refuses new files even to root, for whom permission bits (and os.access) always say yes
    with pytest.raises(PermissionError, match=r"out='/proc/run': cannot write in '/proc'"):
        check_writable("out", "/proc/run", folder=True)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write into a read-only folder")
def test_a_read_only_folder_is_refused(tmp_path):
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    try:
        with pytest.raises(PermissionError, match="cannot write in"):
            check_writable("out", tmp_path / "ro" / "run", folder=True)
    finally:
        os.chmod(tmp_path / "ro", 0o700)
