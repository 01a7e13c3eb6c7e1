"""Fixtures for the whole test suite, and the exercise grader's option (--impl, see docs/exercises.md)."""

import functools
import importlib.util
import os
from pathlib import Path

import pytest
import torch

EXERCISE_DIR = Path(__file__).resolve().parent.parent / "notebooks" / "exercises"
_modules = {}  # path -> loaded module, so each file is imported once per run


def pytest_addoption(parser):
    parser.addoption("--impl", default=None,
                     help="what tests/test_exercises.py grades: 'reference' (default: the library), 'mine' "
                          "(notebooks/exercises/mine/), or a folder of exercise files; or set EXERCISE_IMPL")


def exercise_folder(config):
    """None for the reference, else the folder holding the student's exercise files."""
    impl = config.getoption("--impl") or os.environ.get("EXERCISE_IMPL") or "reference"
    if impl == "reference":
        return None
    folder = EXERCISE_DIR / "mine" if impl == "mine" else Path(impl).resolve()
    if impl != "mine" and not folder.is_dir():
        raise pytest.UsageError(f"--impl={impl!r}: must be 'reference', 'mine' or an existing folder")
    return folder


def load_exercise(path):
    """The module of an exercise file, imported by path once per run."""
    if path not in _modules:
        spec = importlib.util.spec_from_file_location(f"exercise_{path.parent.name}_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # a syntax error here fails this exercise's tests, with its traceback
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
    folder = exercise_folder(request.config)
    if folder is None:
        return load_exercise(EXERCISE_DIR / "reference.py")
    path = folder / f"{exercise}.py"
    if not path.is_file():
        shown = folder.relative_to(Path.cwd()) if folder.is_relative_to(Path.cwd()) else folder
        pytest.skip(f"exercise {exercise}: no {path} yet; start from the skeleton: "
                    f"mkdir -p {shown} && cp notebooks/exercises/{exercise}.py {shown}/")
    return _Graded(load_exercise(path), exercise)


_exercise_of = {}  # test id -> exercise, for the tests of tests/test_exercises.py
_graded = {}  # test id -> (exercise, property, "ok" | "FAIL" | "todo", why), in run order


def pytest_collection_modifyitems(items):
    for item in items:
        if getattr(item.cls, "EXERCISE", None):
            _exercise_of[item.nodeid] = item.cls.EXERCISE


def pytest_runtest_logreport(report):
    exercise = _exercise_of.get(report.nodeid)
    if exercise is None or (report.passed and report.when != "call"):
        return
    if report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        status, why = "FAIL", (crash.message if crash else str(report.longrepr)).strip().split("\n")[0]
    elif report.skipped:
        status, why = "todo", report.longrepr[2].removeprefix("Skipped: ") if isinstance(report.longrepr, tuple) else ""
    else:
        status, why = "ok", ""
    if _graded.get(report.nodeid, (None, None, "ok"))[2] == "ok":  # a later teardown error still counts
        prop = report.nodeid.split("::")[-1].removeprefix("test_").replace("_", " ")
        _graded[report.nodeid] = (exercise, prop, status, why)


def pytest_terminal_summary(terminalreporter, config):
    """When grading a student's files: per exercise, which properties hold, fail, or are not done yet."""
    if exercise_folder(config) is None or not _graded:
        return
    terminalreporter.section(f"exercises graded from {exercise_folder(config)}")
    for exercise in dict.fromkeys(e for e, _, _, _ in _graded.values()):
        results = [r for r in _graded.values() if r[0] == exercise]
        held = sum(status == "ok" for _, _, status, _ in results)
        terminalreporter.write_line(f"{exercise}: {held} of {len(results)} properties hold")
        if len({(status, why) for _, _, status, why in results}) == 1 and results[0][2] == "todo":
            terminalreporter.write_line(f"  todo {results[0][3]}")  # one reason for all: say it once
            continue
        for _, prop, status, why in results:
            terminalreporter.write_line(f"  {status:<4} {prop}" + (f"  -- {why}" if why else ""))


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Every test runs torch on one thread.

    The test models are tiny and gain nothing from a second thread, while OpenMP threads that wait for
    a core busy with another process make each step many times slower. Tests that spawn processes
    (notebook kernels, DDP workers, benchmark jobs) set their own thread count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
