"""Every name the docs give for code exists: a reader who looks it up finds it.

The docs are README.md, docs/*.md and the markdown cells of the notebooks. Three kinds of name:
- dotted names under the packages, `lora.layer.LoRALinear.merge` or `minigpt.finetune` (prose or
  code), imported module by module and then looked up attribute by attribute;
- `Class.attribute` in backticks where Class is exported by `lora` or `minigpt` (`LoRAAdapter.forward`);
- test names, `test_zero_init_is_identity`: a test of that name is defined under tests/ (or, for
  `test_x` alone, a file tests/**/test_x.py exists).
"""

import importlib
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PACKAGES = ("lora", "minigpt")

DOTTED = re.compile(r"(?<![\w./-])((?:lora|minigpt)(?:\.[A-Za-z_]\w*)+)")
FILE_SUFFIXES = (".md", ".py", ".ipynb", ".json", ".txt", ".png", ".safetensors")
BACKTICKED = re.compile(r"`([A-Z]\w*)((?:\.[A-Za-z_]\w*)+)")
TEST_NAME = re.compile(r"\btest_\w+")


def doc_texts():
    """(label, text) for every document a student reads."""
    texts = [(str(p.relative_to(ROOT)), p.read_text(encoding="utf-8")) for p in DOCS]
    for p in NOTEBOOKS:
        nb = nbformat.read(p, as_version=4)
        texts.append((str(p.relative_to(ROOT)), "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")))
    return texts


def dotted_names(text):
    """The lora.* / minigpt.* names in a text, without file names such as lora.md."""
    names = set()
    for m in DOTTED.finditer(text):
        name = m.group(1).rstrip(".")
        if not any(m.group(1).endswith(s[1:]) and text[m.end(1) - len(s):m.end(1)] == s for s in FILE_SUFFIXES):
            names.add(name)
    return names


def resolve(name):
    """Import the longest module prefix of `name`, then look up the rest as attributes; None if it exists,
    else why not."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError as e:
            if e.name and not ".".join(parts[:i]).startswith(e.name):  # the module exists but imports something missing
                return f"importing {'.'.join(parts[:i])} fails: {e}"
            continue
        for j, attr in enumerate(parts[i:], start=i):
            if not hasattr(obj, attr):
                return f"{'.'.join(parts[:j])} has no attribute {attr!r}"
            obj = getattr(obj, attr)
        return None
    return f"no module {parts[0]!r}"


def defined_tests():
    names, files = set(), set()
    # the suite's tests, and the bug lab's tests a student writes (its skeleton and its worked solution)
    for path in [*(ROOT / "tests").rglob("test_*.py"), ROOT / "notebooks" / "exercises" / "bug_lab.py"]:
        files.add(path.stem)
        names.update(re.findall(r"^\s*def (test_\w+)", path.read_text(encoding="utf-8"), re.M))
    return names, files


@pytest.mark.parametrize("label,text", doc_texts(), ids=[label for label, _ in doc_texts()])
def test_every_dotted_package_name_in_the_docs_exists(label, text):
    missing = {n: why for n in sorted(dotted_names(text)) if (why := resolve(n))}
    assert not missing, f"{label} names code that does not exist:\n" + "\n".join(f"  {n}: {w}" for n, w in missing.items())


@pytest.mark.parametrize("label,text", doc_texts(), ids=[label for label, _ in doc_texts()])
def test_every_class_attribute_in_backticks_exists(label, text):
    exported = {p: importlib.import_module(p) for p in PACKAGES}
    missing = []
    for cls, rest in set(BACKTICKED.findall(text)):
        owner = next((getattr(m, cls) for m in exported.values() if hasattr(m, cls)), None)
        if owner is None:
            continue  # not one of ours (torch's, or a notebook's own class)
        if resolve(f"{owner.__module__}.{owner.__qualname__}{rest}"):
            missing.append(f"{cls}{rest}")
    assert not missing, f"{label} names attributes that do not exist: {sorted(missing)}"


@pytest.mark.parametrize("label,text", doc_texts(), ids=[label for label, _ in doc_texts()])
def test_every_test_the_docs_cite_exists(label, text):
    names, files = defined_tests()
    cited = set(TEST_NAME.findall(text))
    missing = sorted(t for t in cited if t not in names and t not in files)
    assert not missing, f"{label} cites tests that do not exist: {missing}"


def test_a_name_that_does_not_exist_is_caught():
    # the names the docs once gave wrongly, and two that are fine
    assert resolve("lora.layer.LoRALinear.reset_lora_parameters") == "lora.layer.LoRALinear has no attribute 'reset_lora_parameters'"
    assert resolve("lora.nope") is not None and resolve("minigpt.model.GPT.nope") is not None
    assert resolve("lora.adapter.LoRAAdapter.forward") is None and resolve("minigpt.finetune") is None
    assert dotted_names("see [lora.md](lora.md), `lora/nf4.py`, minigpt.model.GPT.") == {"minigpt.model.GPT"}
