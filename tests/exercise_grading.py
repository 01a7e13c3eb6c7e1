"""The exercise grader: the pytest options, fixtures and hooks behind `pytest tests/test_exercises.py --impl=...`
and `pytest tests/test_bug_lab.py --impl=...` (the workflow is in docs/exercises.md).

tests/conftest.py imports the hooks and fixtures from here; tests/grading_report.py writes the summary
and the JSON report. What the grader does:

- `--impl` says what the graded tests run on: "solutions" (the default, what plain `pytest` and CI
  run: tests/exercise_solutions/), "mine" (notebooks/exercises/mine/) or a folder of exercise files.
  A bad value is one usage error at startup.
- Every graded test belongs to a unit: an exercise (its class's EXERCISE) or a planted bug of the bug
  lab (its `bug` parameter). The unit's name is one of the test's keywords, so `-k lora_layer` selects
  exactly that exercise's properties.
- Each graded property runs under a time limit (--time-limit; Note: How a property is stopped).
- In a student's files, NotImplementedError raised by their code marks the property `todo`.
- After the run, a summary per unit; the run exits non-zero unless every graded property that ran
  holds (a `todo` is not a pass); `--report FILE` writes the same as JSON.

Bookkeeping: config.stash[GRADES] maps a graded test's node id to its Grade, in run order.
"""

import dataclasses
import importlib.util
import os
import signal
import sys
import threading
from pathlib import Path

import pytest
from grading_report import all_hold, write_report, write_summary

ROOT = Path(__file__).resolve().parent.parent
EXERCISE_DIR = ROOT / "notebooks" / "exercises"
SOLUTIONS_DIR = Path(__file__).resolve().parent / "exercise_solutions"
BUG_DIR = EXERCISE_DIR / "bugs"
BUG_LAB_FILE = "bug_lab.py"  # the student's property tests for the bug lab, beside their exercise files
DEFAULT_TIME_LIMIT = 20.0  # seconds per property; the solutions' slowest property takes about 1 s


@dataclasses.dataclass
class Grade:
    """One graded test: its unit (exercise or bug), the property it checks, and how it went."""
    kind: str   # "exercise" | "bug"
    unit: str
    prop: str
    status: str = "ok"  # "ok" | "FAIL" | "todo"
    why: str = ""
    calls: tuple = ()   # the names of the graded module the property used, in first-use order


@dataclasses.dataclass(frozen=True)
class Impl:
    """What the graded tests run on: a folder of exercise files."""
    name: str        # as given: "solutions", "mine" or a path
    folder: Path
    explicit: bool   # given by --impl or EXERCISE_IMPL (then the summary is printed)

    @property
    def is_student(self):
        """A student's folder: unwritten functions are `todo` there, and missing files too."""
        return self.folder != SOLUTIONS_DIR


GRADES = pytest.StashKey[dict]()
IMPL = pytest.StashKey[Impl]()


def pytest_addoption(parser):
    group = parser.getgroup("exercises", "grading the exercises (docs/exercises.md)")
    group.addoption("--impl", default=None,
                    help="what the graded tests run on: 'solutions' (default: tests/exercise_solutions/), 'mine' "
                         "(notebooks/exercises/mine/), or a folder of exercise files; or set EXERCISE_IMPL")
    group.addoption("--time-limit", type=float, default=DEFAULT_TIME_LIMIT, metavar="SECONDS",
                    help=f"longest a graded property may run before it fails (default {DEFAULT_TIME_LIMIT:g}; 0: no limit)")
    group.addoption("--report", default=None, metavar="FILE",
                    help="write the grades as JSON to FILE: per exercise the properties held of the total, and "
                         "the bug lab's catches")


def resolve_impl(value):
    """The Impl named by an --impl value (None: the default); raises pytest.UsageError for a bad one."""
    name = value or "solutions"
    if name == "solutions":
        return Impl(name, SOLUTIONS_DIR, value is not None)
    folder = EXERCISE_DIR / "mine" if name == "mine" else Path(name).expanduser().resolve()
    if name == "mine" and not folder.is_dir():
        raise pytest.UsageError("--impl=mine grades notebooks/exercises/mine/, which does not exist yet; start with "
                                "mkdir -p notebooks/exercises/mine && cp notebooks/exercises/lora_layer.py "
                                "notebooks/exercises/mine/ (docs/exercises.md)")
    if not folder.is_dir():
        what = "is a file" if folder.is_file() else "does not exist"
        raise pytest.UsageError(f"--impl={name!r}: {folder} {what}; --impl takes 'solutions', 'mine' or a folder "
                                "holding your exercise files (lora_layer.py, ...)")
    return Impl(name, folder, True)


@pytest.hookimpl(tryfirst=True)  # before the terminal reporter reads the report characters
def pytest_configure(config):
    impl = config.stash[IMPL] = resolve_impl(config.getoption("--impl") or os.environ.get("EXERCISE_IMPL"))
    limit = config.getoption("--time-limit")
    if not limit >= 0:  # also refuses NaN
        raise pytest.UsageError(f"--time-limit={limit}: give a number of seconds >= 0 (0: no limit)")
    report = config.getoption("--report")
    if report is not None and (Path(report).is_dir() or not Path(report).resolve().parent.is_dir()):
        raise pytest.UsageError(f"--report={report!r}: give a file name in an existing folder")
    if impl.explicit:  # the grading section lists what is not done yet: keep the short summary to failures
        chars = config.option.reportchars.replace("a", "fE").replace("A", "fE")
        config.option.reportchars = chars.replace("s", "").replace("S", "")
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


# --- loading what is graded -----------------------------------------------------------------------
_modules = {}  # path -> loaded module, so each file is imported once per run
_broken = {}   # path -> why importing it failed, so later tests fail at once instead of importing again


def load_module(path, seconds=0.0, name=None):
    """The module of a Python file (or a package folder), imported by path once per run.

    Its top level runs under the time limit. If importing fails (a syntax error, an exception, a hang),
    the first test that needs it fails with the traceback, the later ones with a one-line reminder.
    """
    if path in _broken:
        pytest.fail(f"importing {path.name} failed (see the first test that imported it): {_broken[path]}", pytrace=False)
    if path not in _modules:
        package = path.is_dir()
        name = name or f"exercise_{path.parent.name}_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path / "__init__.py" if package else path,
                                                      submodule_search_locations=[str(path)] if package else None)
        module = importlib.util.module_from_spec(spec)
        if package:  # its modules import as name.<module>
            sys.modules[name] = module
        try:
            call_with_time_limit(lambda: spec.loader.exec_module(module), seconds, f"importing {path.name}")
        except BaseException as e:
            why = str(e) if isinstance(e, pytest.fail.Exception) else f"{type(e).__name__}: {e}"
            _broken[path] = why.split("\n")[0]
            raise
        _modules[path] = module
    return _modules[path]


class _Graded:
    """A student's module: a name it does not define fails the property with a clear message."""

    def __init__(self, module, unit):
        self._module, self._unit = module, unit
        self._calls = []  # what the property used: a failure names these functions (the report's "calls")

    def __getattr__(self, name):
        if name not in self._calls:
            self._calls.append(name)
        try:
            return getattr(self._module, name)
        except AttributeError:
            pytest.fail(f"exercise {self._unit}: {self._module.__file__} defines no {name}; keep the "
                        "skeleton's names", pytrace=False)


def graded_file(config, filename, unit):
    """The graded module `filename` of the chosen implementation; a missing student file is `todo`."""
    impl = config.stash[IMPL]
    path = impl.folder / filename
    if not path.is_file():
        if not impl.is_student:
            pytest.fail(f"the worked solutions lack {path}", pytrace=False)
        shown = impl.folder.relative_to(Path.cwd()) if impl.folder.is_relative_to(Path.cwd()) else impl.folder
        pytest.skip(f"{unit}: no {shown / filename} yet; start from the skeleton: "
                    f"mkdir -p {shown} && cp notebooks/exercises/{filename} {shown}/")
    return _Graded(load_module(path, config.getoption("--time-limit")), unit)


@pytest.fixture
def ex(request):
    """The implementation graded by a test class of tests/test_exercises.py (its EXERCISE names the file)."""
    exercise = request.cls.EXERCISE
    return graded_file(request.config, f"{exercise}.py", f"exercise {exercise}")


@pytest.fixture
def bug_lab_tests(request):
    """The property tests graded by tests/test_bug_lab.py: the chosen implementation's bug_lab.py."""
    return graded_file(request.config, BUG_LAB_FILE, "bug lab")


@pytest.fixture(scope="session")
def planted_bugs(request):
    """notebooks/exercises/bugs/, the package of planted bugs (always the course's own, never a copy)."""
    return load_module(BUG_DIR, request.config.getoption("--time-limit"), name="exercise_bugs")


# --- selection, time limit and bookkeeping per graded test -----------------------------------------


def graded_unit(item):
    """(kind, unit) of a collected test: ("exercise", name), ("bug", name), or None for the rest of the suite."""
    exercise = getattr(getattr(item, "cls", None), "EXERCISE", None)
    if exercise:
        return "exercise", exercise
    if getattr(getattr(item, "module", None), "BUG_LAB", False) and hasattr(item, "callspec"):
        return "bug", item.callspec.params["bug"]
    return None


def pytest_itemcollected(item):
    unit = graded_unit(item)
    if unit:  # `-k lora_layer` matches the unit's name, not only test and class names
        item.extra_keyword_matches.add(unit[1])


def property_name(item):
    """'test_merge_preserves_output[3-4]' -> 'merge preserves output [3-4]' (a bug's own id is left out)."""
    name = item.name.removeprefix("test_")
    base, _, params = name.partition("[")
    if graded_unit(item)[0] == "bug":
        return base.replace("_", " ")
    return base.replace("_", " ") + (f" [{params}" if params else "")


def not_implemented(error, folder):
    """'Class.method' for a NotImplementedError raised by code in `folder`, else None."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None or Path(tb.tb_frame.f_code.co_filename).resolve().parent != folder:
        return None
    code = tb.tb_frame.f_code
    return getattr(code, "co_qualname", code.co_name)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    unit = graded_unit(item)
    if unit is None:
        return (yield)
    limit = item.config.getoption("--time-limit")
    impl = item.config.stash[IMPL]
    test = item.obj

    def graded(*args, **kwargs):
        try:
            return call_with_time_limit(lambda: test(*args, **kwargs), limit, "the property")
        except NotImplementedError as e:
            where = not_implemented(e, impl.folder) if impl.is_student else None
            if where is None:
                raise
            pytest.skip(f"{'exercise ' + unit[1] if unit[0] == 'exercise' else 'bug lab'}: {where}() not implemented yet")
    item.obj = graded  # pytest calls item.obj with the test's fixtures
    try:
        return (yield)
    finally:
        item.obj = test


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    unit = graded_unit(item)
    if unit is None:
        return report
    grades = item.config.stash[GRADES]
    grade = grades.setdefault(item.nodeid, Grade(*unit, property_name(item)))
    graded = getattr(item, "funcargs", {}).get("ex")
    if isinstance(graded, _Graded):
        grade.calls = tuple(graded._calls)
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


def pytest_sessionfinish(session, exitstatus):
    """A grading run passes only if every graded property that ran holds (`todo` is not a pass); --report."""
    grades = session.config.stash.get(GRADES, {})
    if grades and not all_hold(grades) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    report = session.config.getoption("--report", None)
    if report and not session.config.option.collectonly:
        write_report(report, session.config.stash[IMPL], grades, session.config.getoption("--time-limit"))


def pytest_terminal_summary(terminalreporter, config):
    """When grading a chosen implementation: per exercise and per bug, what holds, fails, or is not done yet."""
    impl = config.stash.get(IMPL, None)
    grades = config.stash.get(GRADES, {})
    if grades and impl is not None and impl.explicit:
        write_summary(terminalreporter, impl, grades)
