"""Every grading command the course prints selects the whole of each exercise it names, and nothing else.

The commands are found where a student reads them: the notebooks' cells and outputs, README.md,
docs/*.md and the docstrings of the skeletons in notebooks/exercises/. Each is collected by pytest
in this process (`--collect-only`, its --impl replaced by the reference and its --report dropped, so
nothing is graded or written), and what it selects is compared with the tests of the exercises its
`-k` expression names: `-k "zero_init or lora_layer"` must select every property of both.
"""

import json
import re
import shlex

import pytest
from exercise_grading import EXERCISE_DIR, ROOT, exercise_of

GRADING_FILES = ("tests/test_exercises.py",)
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
    """pytest plugin recording what a session selected: [(node id, exercise)]."""

    def __init__(self):
        self.items = []

    def pytest_collection_finish(self, session):
        self.items = [(item.nodeid, exercise_of(item)) for item in session.items]


def collect(args):
    """Run pytest's collection in this process on `args`; (exit code, [(node id, exercise)])."""
    plugin = Collected()
    code = pytest.main([*args, "--collect-only", "-q", "-p", "no:cacheprovider", "-p", "no:faulthandler",
                        "--impl=reference"], plugins=[plugin])
    return code, plugin.items


_everything = {}  # test files -> [(node id, exercise)] without a filter


def everything(files):
    key = tuple(files)
    if key not in _everything:
        code, items = collect([str(ROOT / f) for f in files])
        assert code == 0, f"collecting {files} failed with exit code {code}"
        _everything[key] = items
    return _everything[key]


def named_exercises(keyword, exercises):
    """The exercises a -k expression names; every name in it must be one of `exercises`."""
    names = [w for w in re.findall(r"[^\s()]+", keyword) if w not in ("and", "or", "not")]
    unknown = [n for n in names if n not in exercises]
    assert not unknown, f"-k {keyword!r} names {unknown}, which are not exercises ({sorted(exercises)})"
    return names


def selects(keyword, exercise):
    """Whether `-k keyword` should select `exercise`: each name in it is true for that exercise alone."""
    python = re.sub(r"[^\s()]+", lambda m: m.group(0) if m.group(0) in ("and", "or", "not")
                    else str(m.group(0) == exercise), keyword)
    return eval(python, {"__builtins__": {}})  # only True/False/and/or/not/parentheses are left


def check_selection(files, keyword, rest):
    """Collect `files` with `-k keyword` and compare with the whole of the exercises it names."""
    every = everything(files)
    exercises = {e for _, e in every if e}
    assert all(e for _, e in every), f"{files} hold tests that belong to no exercise"
    wanted = [n for n, e in every if keyword is None or selects(keyword, e)]
    if keyword is not None:
        assert named_exercises(keyword, exercises)
    code, items = collect([str(ROOT / f) for f in files] + rest + ([] if keyword is None else ["-k", keyword]))
    got = [n for n, _ in items]
    missing, extra = sorted(set(wanted) - set(got)), sorted(set(got) - set(wanted))
    assert code == 0 and not missing and not extra, (
        f"selects {len(got)} tests (exit code {code}); {len(missing)} of the named exercises' tests are missing "
        f"{missing[:3]}, {len(extra)} others are selected {extra[:3]}")


def test_commands_are_found_where_the_course_prints_them():
    places = {p for ps in COMMANDS.values() for p in ps}
    skeletons = {f"notebooks/exercises/{p.name}" for p in EXERCISE_DIR.glob("*.py") if p.name != "reference.py"}
    assert skeletons <= places, f"skeletons that print no grading command: {sorted(skeletons - places)}"
    assert any(p.startswith("notebooks/0") for p in places) and "docs/exercises.md" in places, sorted(places)


def test_each_skeleton_prints_the_command_that_grades_it():
    for path in EXERCISE_DIR.glob("*.py"):
        if path.name == "reference.py":
            continue
        commands = [c for c, places in COMMANDS.items() if f"notebooks/exercises/{path.name}" in places]
        keywords = [parse(c)[1] or "" for c in commands]
        assert any(path.stem in re.findall(r"[^\s()]+", k) for k in keywords), \
            f"{path.name} prints {commands}, none of which names its exercise {path.stem!r}"


@pytest.mark.parametrize("command", sorted(COMMANDS), ids=lambda c: c.replace(" ", "_")[:90])
def test_printed_command_selects_the_exercises_it_names(command):
    files, keyword, rest = parse(command)
    assert files and all(f in GRADING_FILES for f in files), f"{command!r} (printed in {COMMANDS[command]})"
    try:
        check_selection(files, keyword, rest)
    except AssertionError as e:
        raise AssertionError(f"{command!r}, printed in {COMMANDS[command]}: {e}") from None


def test_each_exercise_name_selects_exactly_its_tests():
    exercises = dict.fromkeys(e for _, e in everything(GRADING_FILES))
    assert len(exercises) >= 6, exercises
    for exercise in exercises:
        check_selection(GRADING_FILES, exercise, [])
    first, *_, last = exercises
    check_selection(GRADING_FILES, f"{first} or {last}", [])
