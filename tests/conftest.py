"""Fixtures for the whole test suite, and the exercise grader's options and hooks (tests/exercise_grading.py,
docs/exercises.md)."""

import signal

import pytest
import torch

# the grader's options, hooks and `ex` fixture: pytest finds them by name in this module
from exercise_grading import (  # noqa: F401
    bug_lab_tests,
    ex,
    planted_bugs,
    pytest_addoption,
    pytest_configure,
    pytest_itemcollected,
    pytest_runtest_call,
    pytest_runtest_makereport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)


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


@pytest.fixture(autouse=True)
def seed():
    """Every test starts from torch.manual_seed(0): one seed for the whole suite, so any test can be run alone."""
    torch.manual_seed(0)


@pytest.fixture
def python_sigint_handler():
    """SIGINT raises KeyboardInterrupt, as in any Python program, whatever the test runner inherited: a
    process started in the background (`cmd &` in a script) begins with SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
