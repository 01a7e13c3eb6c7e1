"""The exercise grader: the pytest options and hooks behind `pytest tests/test_exercises.py --impl=...`.

tests/conftest.py imports the hooks and the `ex` fixture from here. What they do (docs/exercises.md):

- `--impl` says which implementation the graded tests run on: "reference" (the default, what plain
  `pytest` and CI run), "mine" (notebooks/exercises/mine/) or a folder of exercise files. A bad value
  is one usage error at startup.
- Every graded test belongs to an exercise (its class's EXERCISE); the exercise's name is added to the
  test's keywords, so `-k lora_layer` selects exactly that exercise's properties.
- Each graded property runs under a time limit (--time-limit, see `call_with_time_limit`).
- After the run, a summary per exercise: which properties hold (ok), break (FAIL) or are not written
  yet (todo); the run exits non-zero unless every graded property that ran holds.

Shape of the bookkeeping: config.stash[GRADES] maps a test's node id to a Grade, in run order.
"""

import dataclasses
import functools
import importlib.util
import os
import signal
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXERCISE_DIR = ROOT / "notebooks" / "exercises"
REFERENCE = EXERCISE_DIR / "reference.py"
DEFAULT_TIME_LIMIT = 20.0  # seconds per property; the reference's slowest property takes about 1 s


@dataclasses.dataclass
class Grade:
    """One graded test: the exercise, the property it proves, and how it went."""
    exercise: str
    prop: str
    status: str = "ok"  # "ok" | "FAIL" | "todo"
    why: str = ""


@dataclasses.dataclass(frozen=True)
class Impl:
    """What the graded tests run on: the reference (folder None), or a folder of exercise files."""
    name: str             # as given: "reference", "mine" or a path
    folder: Path | None
    explicit: bool        # given by --impl or EXERCISE_IMPL (then the summary is printed)


GRADES = pytest.StashKey[dict]()
IMPL = pytest.StashKey[Impl]()


def pytest_addoption(parser):
    group = parser.getgroup("exercises", "grading the exercises (docs/exercises.md)")
    group.addoption("--impl", default=None,
                    help="what tests/test_exercises.py grades: 'reference' (default: the worked answers), 'mine' "
                         "(notebooks/exercises/mine/), or a folder of exercise files; or set EXERCISE_IMPL")
    group.addoption("--time-limit", type=float, default=DEFAULT_TIME_LIMIT, metavar="SECONDS",
                    help=f"longest a graded property may run before it fails (default {DEFAULT_TIME_LIMIT:g}; 0: no limit)")


def resolve_impl(value):
    """The Impl named by an --impl value (None: the default); raises pytest.UsageError for a bad one."""
    name = value or "reference"
    if name == "reference":
        return Impl(name, None, value is not None)
    folder = EXERCISE_DIR / "mine" if name == "mine" else Path(name).expanduser().resolve()
    if name == "mine" and not folder.is_dir():
        raise pytest.UsageError("--impl=mine grades notebooks/exercises/mine/, which does not exist yet; start with "
                                "mkdir -p notebooks/exercises/mine && cp notebooks/exercises/lora_layer.py "
                                "notebooks/exercises/mine/ (docs/exercises.md)")
    if not folder.is_dir():
        what = "is a file" if folder.is_file() else "does not exist"
        raise pytest.UsageError(f"--impl={name!r}: {folder} {what}; --impl takes 'reference', 'mine' or a folder "
                                "holding your exercise files (lora_layer.py, ...)")
    return Impl(name, folder, True)


@pytest.hookimpl(tryfirst=True)  # before the terminal reporter reads the report characters
def pytest_configure(config):
    impl = config.stash[IMPL] = resolve_impl(config.getoption("--impl") or os.environ.get("EXERCISE_IMPL"))
    if impl.explicit:  # the grading section lists what is not done yet: keep the short summary to failures
        chars = config.option.reportchars.replace("a", "fE").replace("A", "fE")
        config.option.reportchars = chars.replace("s", "").replace("S", "")
    limit = config.getoption("--time-limit")
    if not limit >= 0:  # also refuses NaN
        raise pytest.UsageError(f"--time-limit={limit}: give a number of seconds >= 0 (0: no limit)")
    config.stash[GRADES] = {}


# --- the time limit -------------------------------------------------------------------------------
# Note: How a property is stopped
# On POSIX, in the main thread, SIGALRM interrupts the property after `seconds`: the handler raises
# pytest's failure exception inside the student's code, which unwinds it, so the next property starts
# clean. A single long torch call is interrupted only when it returns. Elsewhere (Windows has no
# SIGALRM) the property runs in a daemon thread that is waited for `seconds`: the property then fails
# on time as well, but its code cannot be stopped and keeps running in the background until pytest
# exits, so later properties may run slower.


def _timed_out(what, seconds):
    pytest.fail(f"{what} did not return within {seconds:g} s (an endless loop? raise the limit with "
                "--time-limit SECONDS)", pytrace=False)


def call_with_time_limit(fn, seconds, what):
    """fn() if it returns within `seconds` (0: no limit); else the calling test fails, naming `what`."""
    if not seconds:
        return fn()
    if hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
        def on_alarm(signum, frame):
            _timed_out(what, seconds)
        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    outcome = {}

    def run():
        try:
            outcome["value"] = fn()
        except BaseException as e:  # noqa: BLE001  (re-raised in the caller's thread: skips and failures too)
            outcome["error"] = e
    thread = threading.Thread(target=run, daemon=True, name=f"graded: {what}")
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        _timed_out(what, seconds)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


# --- loading an implementation --------------------------------------------------------------------
_modules = {}  # path -> loaded module, so each file is imported once per run


def load_exercise(path, seconds=0.0):
    """The module of an exercise file, imported by path once per run (its top level under the time limit)."""
    if path not in _modules:
        spec = importlib.util.spec_from_file_location(f"exercise_{path.parent.name}_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        # a syntax error here fails this exercise's tests, with its traceback
        call_with_time_limit(lambda: spec.loader.exec_module(module), seconds, f"importing {path.name}")
        _modules[path] = module
    return _modules[path]


class _Graded:
    """A student's module whose functions turn NotImplementedError into 'not implemented yet' skips."""

    def __init__(self, module, exercise):
        self._module, self._exercise = module, exercise

    def __getattr__(self, name):
        fn = getattr(self._module, name, None)
        if fn is None:
            pytest.fail(f"exercise {self._exercise}: {self._module.__file__} defines no {name}(); keep the "
                        "skeleton's function names", pytrace=False)

        @functools.wraps(fn)
        def call(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except NotImplementedError:
                pytest.skip(f"exercise {self._exercise}: {name}() not implemented yet")
        return call


@pytest.fixture
def ex(request):
    """The implementation graded by a test class of tests/test_exercises.py (its EXERCISE names the skeleton)."""
    exercise = request.cls.EXERCISE
    impl = request.config.stash[IMPL]
    limit = request.config.getoption("--time-limit")
    if impl.folder is None:
        return load_exercise(REFERENCE, limit)
    path = impl.folder / f"{exercise}.py"
    if not path.is_file():
        shown = impl.folder.relative_to(Path.cwd()) if impl.folder.is_relative_to(Path.cwd()) else impl.folder
        pytest.skip(f"exercise {exercise}: no {path} yet; start from the skeleton: "
                    f"mkdir -p {shown} && cp notebooks/exercises/{exercise}.py {shown}/")
    return _Graded(load_exercise(path, limit), exercise)


# --- selection, time limit and bookkeeping per graded test -----------------------------------------


def exercise_of(item):
    """The exercise a collected test grades, or None for the rest of the suite."""
    return getattr(getattr(item, "cls", None), "EXERCISE", None)


def pytest_itemcollected(item):
    exercise = exercise_of(item)
    if exercise:  # `-k lora_layer` matches the exercise's name, not only test and class names
        item.extra_keyword_matches.add(exercise)


def property_name(item):
    """'test_merge_preserves_output[3-4]' -> 'merge preserves output [3-4]'."""
    name = item.name.removeprefix("test_")
    base, _, params = name.partition("[")
    return base.replace("_", " ") + (f" [{params}" if params else "")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    limit = item.config.getoption("--time-limit")
    if not exercise_of(item) or not limit:
        return (yield)
    test = item.obj
    what = "the property"

    @functools.wraps(test)
    def timed(*args, **kwargs):
        return call_with_time_limit(lambda: test(*args, **kwargs), limit, what)
    item.obj = timed  # pytest calls item.obj with the test's fixtures
    try:
        return (yield)
    finally:
        item.obj = test


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    exercise = exercise_of(item)
    if exercise is None:
        return report
    grades = item.config.stash[GRADES]
    grade = grades.setdefault(item.nodeid, Grade(exercise, property_name(item)))
    if grade.status != "ok" or (report.passed and report.when != "call"):
        return report  # the first problem is the one to show; a later teardown error cannot undo it
    if report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        message = (crash.message if crash else str(report.longrepr)).strip().split("\n")[0]
        grade.status, grade.why = "FAIL", message.removeprefix("Failed: ")
    elif report.skipped:
        grade.status = "todo"
        grade.why = report.longrepr[2].removeprefix("Skipped: ") if isinstance(report.longrepr, tuple) else ""
    return report


def verdict(grades):
    """(every graded property holds, counts by status)."""
    counts = {s: sum(g.status == s for g in grades.values()) for s in ("ok", "FAIL", "todo")}
    return counts["ok"] == len(grades), counts


def pytest_sessionfinish(session, exitstatus):
    """A grading run passes only if every graded property that ran holds: `todo` is not a pass."""
    grades = session.config.stash.get(GRADES, {})
    if grades and not verdict(grades)[0] and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config):
    """When grading a chosen implementation: per exercise, which properties hold, fail, or are not done yet."""
    grades = config.stash.get(GRADES, {})
    impl = config.stash.get(IMPL, None)
    if not grades or impl is None or not impl.explicit:
        return
    terminalreporter.section(f"exercises graded from {impl.folder or 'the reference'}")
    for exercise in dict.fromkeys(g.exercise for g in grades.values()):
        results = [g for g in grades.values() if g.exercise == exercise]
        held = sum(g.status == "ok" for g in results)
        terminalreporter.write_line(f"{exercise}: {held} of {len(results)} properties hold")
        if len({(g.status, g.why) for g in results}) == 1 and results[0].status == "todo":
            terminalreporter.write_line(f"  todo {results[0].why}")  # one reason for all: say it once
            continue
        for g in results:
            terminalreporter.write_line(f"  {g.status:<4} {g.prop}" + (f"  -- {g.why}" if g.why else ""))
    passed, counts = verdict(grades)
    if passed:
        terminalreporter.write_line(f"all {counts['ok']} graded properties hold", green=True)
    else:
        terminalreporter.write_line(f"not passed: {counts['ok']} of {len(grades)} graded properties hold "
                                    f"({counts['FAIL']} FAIL, {counts['todo']} todo); exit code 1", red=True)
