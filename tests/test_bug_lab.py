"""The bug lab's grader: a student's property tests run on the library and on each planted bug.

    pytest tests/test_bug_lab.py                 # the worked tests (tests/exercise_solutions/bug_lab.py)
    pytest tests/test_bug_lab.py --impl=mine     # yours: notebooks/exercises/mine/bug_lab.py

For each bug of notebooks/exercises/bugs/, the student's test_<bug>(impl) must pass with impl = the
library (bugs.library()) and fail with impl = the library with that bug planted (bugs.variant(bug)):
the bug is caught when both hold. The grader's summary says which bugs slipped through.
"""

import ast

import pytest
import torch
from exercise_grading import BUG_DIR

BUG_LAB = True  # the grader's mark: each test here grades the bug named by its `bug` parameter


def planted():
    """BUGS of notebooks/exercises/bugs/__init__.py, read without importing it (collection stays cheap)."""
    for node in ast.parse((BUG_DIR / "__init__.py").read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "BUGS":
            return ast.literal_eval(node.value)
    raise AssertionError(f"{BUG_DIR / '__init__.py'} defines no BUGS")


BUGS = planted()


def run(bug_lab_tests, bug, impl):
    test = getattr(bug_lab_tests, f"test_{bug}")
    torch.manual_seed(0)  # the same draws on the library and on the bug
    test(impl)


@pytest.mark.parametrize("bug", BUGS)
def test_passes_on_the_library(bug, bug_lab_tests, planted_bugs):
    run(bug_lab_tests, bug, planted_bugs.library())


@pytest.mark.parametrize("bug", BUGS)
def test_fails_on_the_bug(bug, bug_lab_tests, planted_bugs):
    try:
        run(bug_lab_tests, bug, planted_bugs.variant(bug))
    except NotImplementedError:
        raise  # not written yet: the grader reports it as todo
    except (Exception, pytest.fail.Exception):  # an assertion, pytest.fail/raises, or any error: caught
        return
    pytest.fail(f"test_{bug} passed with the bug planted: it slipped through", pytrace=False)
