"""Every grading command the course prints selects the whole of each exercise it names, and nothing else.

The commands are found where a student reads them: the notebooks' cells and outputs, README.md,
docs/*.md and the docstrings of the skeletons in notebooks/exercises/. Each is collected by pytest
in this process (`--collect-only`, its --impl replaced by the solutions and its --report dropped, so
nothing is graded or written), and what it selects is compared with the tests of the units (exercises,
or planted bugs of the bug lab) its `-k` expression names: `-k "zero_init or lora_layer"` must select
every property of both, and a command without -k every graded test of its files.
"""

import json
import re
import shlex

import pytest
from exercise_grading import EXERCISE_DIR, ROOT, graded_unit

GRADING_FILES = ("tests/test_exercises.py", "tests/test_bug_lab.py")
# `pytest ... tests/test_exercises.py ...` up to the end of its line or inline-code span
COMMAND = re.compile(r"(?:\bEXERCISE_IMPL=\S+\s+)?\bpytest\b[^\n`]*?\b(?:%s)[^\n`]*"
                     % "|".join(re.escape(f) for f in GRADING_FILES))


def notebook_text(path):
    """The text of every cell of a notebook and of its outputs, one string."""
    parts = []
    for cell in json.loads(path.read_text())["cells"]:
        parts.append("".join(cell["source"]))
        for out in cell.get("outputs", []):
            parts.append("".join(out.get("text", "")))
            for value in out.get("data", {}).values():
                parts.append("".join(value) if isinstance(value, list) else str(value))
    return "\n".join(parts)


def course_texts():
    """{place: text} for every place that prints commands to a student."""
    texts = {"README.md": (ROOT / "README.md").read_text()}
    texts.update({f"docs/{p.name}": p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))})
    texts.update({f"notebooks/{p.name}": notebook_text(p) for p in sorted((ROOT / "notebooks").glob("*.ipynb"))})
    texts.update({f"notebooks/exercises/{p.name}": p.read_text() for p in sorted(EXERCISE_DIR.glob("*.py"))})
    return texts


def printed_commands():
    """{command: [places it is printed]} for every grading command the course prints."""
    found = {}
    for place, text in course_texts().items():
        for match in COMMAND.finditer(text):
            command = match.group(0).strip().rstrip(".,;:")
            found.setdefault(command, []).append(place)
    return found


COMMANDS = printed_commands()


def parse(command):
    """(test files, -k expression or None, the other pytest arguments) of a printed command."""
    words = shlex.split(command, comments=True)
    words = words[words.index("pytest") + 1:]
    files, keyword, rest = [], None, []
    while words:
        word = words.pop(0)
        if word == "-k":
            keyword = words.pop(0)
        elif word.startswith("-k") and not word.startswith("--"):
            keyword = word[2:]
        elif word == "--impl" or word == "--report":
            words.pop(0)
        elif word.startswith(("--impl=", "--report=")):
            pass
        elif word.startswith("-"):
            rest.append(word)
        else:
            files.append(word)
    return files, keyword, rest


class Collected:
    """pytest plugin recording what a session selected: [(node id, unit)]."""

    def __init__(self):
        self.items = []

    def pytest_collection_finish(self, session):
        self.items = [(item.nodeid, (graded_unit(item) or (None, None))[1]) for item in session.items]


def collect(args):
    """Run pytest's collection in this process on `args`; (exit code, [(node id, unit)])."""
    plugin = Collected()
    # the plugins left out would only slow each collection down (unraisableexception runs gc.collect() twice)
    code = pytest.main([*args, "--collect-only", "-q", "-p", "no:cacheprovider", "-p", "no:faulthandler",
                        "-p", "no:unraisableexception", "-p", "no:threadexception",
                        "--impl=solutions"], plugins=[plugin])
    return code, plugin.items


_everything = {}  # test files -> [(node id, unit)] without a filter


def everything(files):
    key = tuple(files)
    if key not in _everything:
        code, items = collect([str(ROOT / f) for f in files])
        assert code == 0, f"collecting {files} failed with exit code {code}"
        _everything[key] = items
    return _everything[key]


def named_units(keyword, units):
    """The units a -k expression names; every name in it must be one of `units`."""
    names = [w for w in re.findall(r"[^\s()]+", keyword) if w not in ("and", "or", "not")]
    unknown = [n for n in names if n not in units]
    assert not unknown, f"-k {keyword!r} names {unknown}, which are neither exercises nor bugs ({sorted(units)})"
    return names


def selects(keyword, unit):
    """Whether `-k keyword` should select `unit`: each name in it is true for that unit alone."""
    python = re.sub(r"[^\s()]+", lambda m: m.group(0) if m.group(0) in ("and", "or", "not")
                    else str(m.group(0) == unit), keyword)
    return eval(python, {"__builtins__": {}})  # only True/False/and/or/not/parentheses are left


def check_selection(files, keyword, rest):
    """Collect `files` with `-k keyword` and compare with the whole of the units it names."""
    every = everything(files)
    units = {u for _, u in every if u}
    assert all(u for _, u in every), f"{files} hold tests that belong to no exercise or bug"
    wanted = [n for n, u in every if keyword is None or selects(keyword, u)]
    if keyword is not None:
        assert named_units(keyword, units)
    code, items = collect([str(ROOT / f) for f in files] + rest + ([] if keyword is None else ["-k", keyword]))
    got = [n for n, _ in items]
    missing, extra = sorted(set(wanted) - set(got)), sorted(set(got) - set(wanted))
    assert code == 0 and not missing and not extra, (
        f"selects {len(got)} tests (exit code {code}); {len(missing)} of the named units' tests are missing "
        f"{missing[:3]}, {len(extra)} others are selected {extra[:3]}")


def test_commands_are_found_where_the_course_prints_them():
    places = {p for ps in COMMANDS.values() for p in ps}
    skeletons = {f"notebooks/exercises/{p.name}" for p in EXERCISE_DIR.glob("*.py")}
    assert len(skeletons) >= 11 and skeletons <= places, f"skeletons that print no grading command: {sorted(skeletons - places)}"
    assert any(p.startswith("notebooks/0") for p in places) and "docs/exercises.md" in places, sorted(places)


def test_each_skeleton_prints_the_command_that_grades_it():
    for path in EXERCISE_DIR.glob("*.py"):
        commands = [parse(c) for c, places in COMMANDS.items() if f"notebooks/exercises/{path.name}" in places]
        if path.stem == "bug_lab":
            assert ("tests/test_bug_lab.py",) in [tuple(files) for files, _, _ in commands], commands
            continue
        assert any(path.stem in re.findall(r"[^\s()]+", k or "") for _, k, _ in commands), \
            f"{path.name} prints {commands}, none of which names its exercise {path.stem!r}"


@pytest.mark.parametrize("command", sorted(COMMANDS), ids=lambda c: c.replace(" ", "_")[:90])
def test_printed_command_selects_the_exercises_it_names(command):
    files, keyword, rest = parse(command)
    assert files and all(f in GRADING_FILES for f in files), f"{command!r} (printed in {COMMANDS[command]})"
    try:
        check_selection(files, keyword, rest)
    except AssertionError as e:
        raise AssertionError(f"{command!r}, printed in {COMMANDS[command]}: {e}") from None


def test_each_exercise_and_bug_name_selects_exactly_its_tests():
    units = dict.fromkeys(u for _, u in everything(GRADING_FILES))
    assert len(units) >= 18, units  # ten exercises and eight bugs at least
    for unit in units:
        check_selection(GRADING_FILES, unit, [])
    first, *_, last = units
    check_selection(GRADING_FILES, f"{first} or {last}", [])


COPY = re.compile(r"\bcp((?:\s+notebooks/exercises/\w+\.py)+)\s+notebooks/exercises/mine/")


def cells_with_commands():
    """[(place, text)] of each notebook cell that prints a grading command for notebooks/exercises/mine/."""
    blocks = [(f"notebooks/{p.name}", "".join(cell["source"])) for p in sorted((ROOT / "notebooks").glob("*.ipynb"))
              for cell in json.loads(p.read_text())["cells"]]
    return [(place, text) for place, text in blocks if "--impl=mine" in text and COMMAND.search(text)]


def test_a_notebooks_grading_command_grades_only_files_its_cell_copies_into_mine():
    checked = 0
    for place, text in cells_with_commands():
        copied = {stem for files in COPY.findall(text) for stem in re.findall(r"exercises/(\w+)\.py", files)}
        for match in COMMAND.finditer(text):
            files, keyword, _ = parse(match.group(0))
            if keyword is None or files != ["tests/test_exercises.py"]:
                continue
            named = {w for w in re.findall(r"[^\s()]+", keyword) if w not in ("and", "or", "not")}
            checked += 1
            assert named <= copied, (f"{place}: {match.group(0)!r} grades {sorted(named - copied)}, which the cell "
                                     f"does not copy into notebooks/exercises/mine/ (it copies {sorted(copied)})")
    assert checked >= 4, checked
