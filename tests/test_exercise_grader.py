"""The exercise grader grades: run as a student would (`pytest tests/test_exercises.py --impl=FOLDER`) it
fails a wrong solution with a message naming the broken property, passes a right one, and reports the
functions still raising NotImplementedError as not yet done."""

import ast
import inspect
import os
import shutil
import subprocess
import sys

import pytest
from exercise_grading import EXERCISE_DIR, call_with_time_limit, load_exercise

ROOT = EXERCISE_DIR.parent.parent
EXERCISES = ("lora_layer", "zero_init", "params", "nf4", "double_quant", "adapter_arithmetic")


def grade(folder, *args):
    """Run the grader on `folder` in a fresh pytest; returns (exit code, output)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("EXERCISE_IMPL", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_exercises.py"),
                           f"--impl={folder}", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(autouse=True)
def only_on_the_reference(request):
    if (request.config.getoption("--impl") or os.environ.get("EXERCISE_IMPL") or "reference") != "reference":
        pytest.skip("the grader's own tests run in the default (reference) mode")


def test_skeletons_declare_the_reference_interface_and_no_answers():
    reference = load_exercise(EXERCISE_DIR / "reference.py")
    for exercise in EXERCISES:
        tree = ast.parse((EXERCISE_DIR / f"{exercise}.py").read_text())  # parsed, never imported
        functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
        assert functions, f"{exercise}.py declares no function"
        for fn in functions:
            args = [a.arg for a in fn.args.args]
            assert args == list(inspect.signature(getattr(reference, fn.name)).parameters), f"{exercise}.{fn.name}"
            assert ast.get_docstring(fn), f"{exercise}.{fn.name} needs a docstring with its formula and shapes"
            body = fn.body[1:]  # after the docstring
            assert len(body) == 1 and isinstance(body[0], ast.Raise) and ast.unparse(body[0].exc) == "NotImplementedError", \
                f"{exercise}.{fn.name}: a skeleton's body is `raise NotImplementedError`"


def test_grader_names_the_broken_property(tmp_path):
    # a solution that merges without the α/r scaling; zero_init left as the untouched skeleton
    source = (EXERCISE_DIR / "lora_layer.py").read_text()
    answers = {
        "delta_weight": "return alpha / r * B @ A",
        "lora_forward": "out = x @ W.T + (x @ A.T) @ B.T * (alpha / r)\n    return out if b is None else out + b",
        "merge": "return W + B @ A",
        "unmerge": "return W_merged - alpha / r * B @ A",
    }
    for name, body in answers.items():
        head, tail = source.split(f"def {name}(", 1)
        tail = tail.replace("raise NotImplementedError", body, 1)
        source = f"{head}def {name}({tail}"
    (tmp_path / "lora_layer.py").write_text(source)
    shutil.copy(EXERCISE_DIR / "zero_init.py", tmp_path)
    code, out = grade(tmp_path)
    assert code == 1, out
    assert "FAIL merge preserves output  -- AssertionError: merge changed the output by" in out, out
    assert "did you scale ΔW by α/r?" in out, out
    assert "lora_layer: 4 of 5 properties hold" in out and "ok   unmerge undoes merge" in out, out
    assert "zero_init: 0 of 5 properties hold" in out and "init_lora() not implemented yet" in out, out
    assert f"no {tmp_path / 'nf4.py'} yet" in out, out


def test_grader_passes_a_right_solution(tmp_path):
    for exercise in EXERCISES:  # the reference answers every exercise's interface
        shutil.copy(EXERCISE_DIR / "reference.py", tmp_path / f"{exercise}.py")
    code, out = grade(tmp_path)
    assert code == 0, out
    for exercise in EXERCISES:
        assert f"{exercise}: " in out and "FAIL" not in out and "todo" not in out, out
    assert " passed" in out and "skipped" not in out and "failed" not in out, out


def test_untouched_skeletons_fail_the_run_with_a_summary(tmp_path):
    for exercise in EXERCISES:
        shutil.copy(EXERCISE_DIR / f"{exercise}.py", tmp_path)
    code, out = grade(tmp_path)
    assert code == 1, out  # `todo` is not a pass: an autograder reading the exit code awards nothing
    assert "lora_layer: 0 of 5 properties hold" in out and "delta_weight() not implemented yet" in out, out
    assert "not passed: 0 of " in out and "todo); exit code 1" in out, out


@pytest.mark.parametrize("impl", ["no-such-folder", "README.md"])
def test_a_bad_impl_is_one_usage_error(impl):
    code, out = grade(ROOT / impl)
    assert code == pytest.ExitCode.USAGE_ERROR, out
    assert out.count("ERROR:") == 1 and "Traceback" not in out and len(out.splitlines()) <= 3, out
    assert ("does not exist" if impl.startswith("no-") else "is a file") in out, out


def test_a_property_that_hangs_fails_on_time(tmp_path):
    source = (EXERCISE_DIR / "params.py").read_text().replace("raise NotImplementedError", "while True:\n        pass", 1)
    (tmp_path / "params.py").write_text(source)
    code, out = grade(tmp_path, "-k", "params", "--time-limit", "0.5")
    assert code == 1, out
    assert "FAIL count is linear in rank and symmetric  -- the property did not return within 0.5 s" in out, out


def test_the_time_limit_holds_off_the_main_thread_too():
    # the thread fallback (Windows, or a grader run from a thread): a hang fails, a result or a skip comes back
    import threading
    outcome = {}

    def run():
        for name, fn in {"hang": lambda: threading.Event().wait(5), "value": lambda: 42,
                         "skip": lambda: pytest.skip("later")}.items():
            try:
                outcome[name] = call_with_time_limit(fn, 0.2, "the property")
            except BaseException as e:  # noqa: BLE001  (pytest's outcomes are BaseExceptions)
                outcome[name] = e
    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert "did not return within 0.2 s" in str(outcome["hang"]), outcome
    assert outcome["value"] == 42 and isinstance(outcome["skip"], pytest.skip.Exception), outcome
