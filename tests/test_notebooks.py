"""Every notebook in notebooks/ runs top to bottom without an error in fast mode (NB_FAST=1).

The notebooks prove their claims with asserts, so "runs without error" means "every claim holds".
Discovery is a glob: a notebook added later is covered without editing this file. Each notebook is
executed in memory with cwd = notebooks/, exactly as a student's Jupyter would run it; the committed
file (with its full-mode outputs) is never rewritten.

A notebook that reads tiny Shakespeare says so in its metadata ("minigpt": {"needs_data": [...]});
with no local copy (no $MINIGPT_DATA_DIR, nothing cached) it is skipped, as the data tests are,
rather than downloading the file.
"""

import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from minigpt.data import tiny_shakespeare_path

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
NOTEBOOK_TIMEOUT_S = 300  # for the whole notebook, kernel start included
MAX_NOTEBOOK_BYTES = 300_000  # committed with outputs; figures are small PNGs


def missing_data(nb):
    """Why the notebook cannot run offline here (a message), or None when its data is local."""
    for name in nb.metadata.get("minigpt", {}).get("needs_data", []):
        assert name == "tiny_shakespeare", f"unknown data {name!r} in the notebook's metadata; known: tiny_shakespeare"
        try:
            tiny_shakespeare_path(download=False)
        except FileNotFoundError as e:
            return str(e)
    return None


def test_notebooks_exist():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_a_notebook_that_reads_tiny_shakespeare_declares_it(path):
    # the declaration is what lets the suite skip the notebook, instead of failing it, where the data is absent
    nb = nbformat.read(path, as_version=4)
    code = "".join(c.source for c in nb.cells if c.cell_type == "code")
    reads = any(f in code for f in ("load_data", "load_tiny_shakespeare", "tiny_shakespeare_path"))
    assert reads == ("tiny_shakespeare" in nb.metadata.get("minigpt", {}).get("needs_data", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_outputs_come_from_one_clean_full_run(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "not run top to bottom in one kernel"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"], "a cell's saved output is an error"
    first = "".join(o.get("text", "") for o in code[0].outputs)
    assert "FAST=False" in first, "outputs are from a fast-mode run (NB_FAST=1), not the full course setting"
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_fast_mode(path, monkeypatch):
    # the kernel inherits this process's environment
    monkeypatch.setenv("NB_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # one thread: the fast-mode models are tiny, and two OpenMP threads on a machine whose other core is
    # busy (parallel CI jobs) can run ten times slower than one
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(path, as_version=4)
    missing = missing_data(nb)
    if missing:
        pytest.skip(missing)
    deadline = time.monotonic() + NOTEBOOK_TIMEOUT_S
    client = NotebookClient(
        nb,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},  # the kernel's cwd
        # nbclient's limit is per cell; give each cell what is left of the notebook's budget
        timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),
    )
    client.execute()  # raises CellExecutionError (with the failing cell and traceback) on any error
