"""Notebooks pick their device like the commands do (cuda, then mps, then cpu) and say which one they use.

A notebook that writes device="cpu" never uses a student's GPU. The rule is minigpt.device.pick_device;
the first code cell calls it and prints "device: ...", and no code cell pins the CPU.
"""

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
PINNED = re.compile(r"""\bdevice\s*=\s*["']cpu["']|\.to\(\s*["']cpu["']\s*\)|torch\.device\(\s*["']cpu["']\s*\)""", re.I)


def code_cells(path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_code_cell_pins_the_cpu(path):
    pinned = [(i, m.group()) for i, c in enumerate(code_cells(path)) for m in PINNED.finditer(c.source)]
    assert not pinned, f"{path.name} pins the CPU in code cells {pinned}; use pick_device('auto') and its result"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_the_first_cell_picks_the_device_and_prints_it(path):
    first = code_cells(path)[0]
    assert "pick_device(" in first.source
    printed = "".join(o.get("text", "") for o in first.outputs)
    assert re.search(r"^device: (cpu|cuda|mps)\b", printed, re.M), f"{path.name}'s first cell does not print its device"


def test_the_pin_pattern_catches_the_forms_once_used():
    for text in ('load_base(b, r, device="cpu")', 'DEVICE = "cpu"  # small', "x.to('cpu')", 'torch.device("cpu")'):
        assert PINNED.search(text), text
    for text in ('device=device.type', 'DEVICE = "auto"', "merged.cpu()", 'pick_device("auto")'):
        assert not PINNED.search(text), text
