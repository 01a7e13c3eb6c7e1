"""The exercise grader grades: run as a student runs it (`pytest tests/test_exercises.py tests/test_bug_lab.py
--impl=FOLDER`), it fails a wrong solution with a message naming the broken property, passes right ones,
reports unwritten functions as todo and exits non-zero for them, says which planted bugs a student's
tests let slip through, writes the JSON report, stops a property that hangs, and answers a bad
--impl with one usage error. The class grader (tests/grade_class.py) grades a folder of students.
"""

import ast
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import threading

import pytest
from exercise_grading import EXERCISE_DIR, SOLUTIONS_DIR, call_with_time_limit

ROOT = EXERCISE_DIR.parent.parent
EXERCISES = ("lora_layer", "zero_init", "params", "inject", "lora_backward", "nf4", "double_quant",
             "quantized_linear", "dora", "adapter_arithmetic")
SKELETONS = (*EXERCISES, "bug_lab")


def env():
    e = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
         "PYTHONDONTWRITEBYTECODE": "1"}
    e.pop("EXERCISE_IMPL", None)
    return e


def grade(folder, *args, files=("tests/test_exercises.py", "tests/test_bug_lab.py")):
    """Run the grader on `folder` in a fresh pytest; returns (exit code, output)."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files,
                           f"--impl={folder}", *args], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def fill(source, answers):
    """A skeleton's source with the bodies of the functions in `answers` written."""
    for name, body in answers.items():
        head, tail = source.split(f"def {name}(", 1)
        source = f"{head}def {name}({tail.replace('raise NotImplementedError', body, 1)}"
    return source


def public_defs(tree):
    """{name: argument names} of a module's top-level functions and of its classes' methods ("Class.method")."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            out[node.name] = [a.arg for a in node.args.args]
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            out[node.name] = "class"
            for fn in node.body:
                if isinstance(fn, ast.FunctionDef):
                    out[f"{node.name}.{fn.name}"] = [a.arg for a in fn.args.args]
    return out


@pytest.fixture(autouse=True)
def only_on_the_solutions(request):
    if (request.config.getoption("--impl") or os.environ.get("EXERCISE_IMPL") or "solutions") != "solutions":
        pytest.skip("the grader's own tests run in the default (solutions) mode")


def test_skeletons_declare_the_solutions_interface_and_no_answers():
    for name in SKELETONS:
        skeleton = ast.parse((EXERCISE_DIR / f"{name}.py").read_text())  # parsed, never imported
        solution = ast.parse((SOLUTIONS_DIR / f"{name}.py").read_text())
        declared = public_defs(skeleton)
        assert declared and declared.items() <= public_defs(solution).items(), \
            f"{name}.py: {declared} is not the interface of the worked solution {public_defs(solution)}"
        doc = ast.get_docstring(skeleton)
        assert "§" in doc and f"-k {name}" in doc or name == "bug_lab", \
            f"{name}.py: the module docstring cites the paper's section and prints `-k {name}`"
        imports = {a.name.split(".")[0] for n in ast.walk(skeleton) if isinstance(n, ast.Import | ast.ImportFrom)
                   for a in (n.names if isinstance(n, ast.Import) else [ast.alias(n.module or "")])}
        assert name == "bug_lab" or not imports & {"lora", "minigpt"}, f"{name}.py imports the library: that is the answer"
        for node in ast.walk(skeleton):
            if isinstance(node, ast.FunctionDef):
                body = node.body[1:] if ast.get_docstring(node) else node.body
                if node.name == "__init__" and body and ast.unparse(body[0]) == "super().__init__()":
                    body = body[1:]
                assert len(body) == 1 and isinstance(body[0], ast.Raise) and ast.unparse(body[0].exc) == "NotImplementedError", \
                    f"{name}.{node.name}: a skeleton's body is `raise NotImplementedError`"
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name not in ("forward", "backward", "__init__"):
                assert ast.get_docstring(node), f"{name}.{node.name} needs a docstring: what to compute, with shapes"


def test_grader_names_the_broken_property_and_the_bugs_that_slip_through(tmp_path):
    # lora_layer: a merge without the α/r scaling; zero_init: the untouched skeleton; the bug lab: the worked
    # tests, but one that cannot fail and one that fails on the correct library
    (tmp_path / "lora_layer.py").write_text(fill((EXERCISE_DIR / "lora_layer.py").read_text(), {
        "delta_weight": "return alpha / r * B @ A",
        "lora_forward": "out = x @ W.T + (x @ A.T) @ B.T * (alpha / r)\n    return out if b is None else out + b",
        "merge": "return W + B @ A",
        "unmerge": "return W_merged - alpha / r * B @ A"}))
    shutil.copy(EXERCISE_DIR / "zero_init.py", tmp_path)
    lab = (SOLUTIONS_DIR / "bug_lab.py").read_text()
    lab = lab.replace('def test_random_B_init(impl):\n', 'def test_random_B_init(impl):\n    return\n', 1)
    lab = lab.replace('def test_window_off_by_one(impl):\n', 'def test_window_off_by_one(impl):\n    assert False, "no"\n', 1)
    (tmp_path / "bug_lab.py").write_text(lab)
    report = tmp_path / "grades.json"
    code, out = grade(tmp_path, f"--report={report}")
    assert code == 1, out
    assert "FAIL merge preserves output  -- AssertionError: merge changed the output by" in out, out
    assert "did you scale ΔW by α/r?" in out, out
    assert "lora_layer: 4 of 5 properties hold" in out and "ok   unmerge undoes merge" in out, out
    assert "zero_init: 0 of 5 properties hold" in out and "init_lora() not implemented yet" in out, out
    assert f"no {tmp_path / 'nf4.py'} yet" in out, out
    assert "bug lab: 8 of 10 bugs caught" in out and "caught  missing_scaling" in out, out
    assert "slipped random_B_init  -- test_random_B_init passed with the bug planted: it slipped through" in out, out
    assert "wrong   window_off_by_one  -- your test fails on the correct library: AssertionError: no" in out, out
    data = json.loads(report.read_text())
    assert data["passed"] is False and data["folder"] == str(tmp_path), data
    assert data["exercises"]["lora_layer"]["held"] == 4 and data["exercises"]["lora_layer"]["total"] == 5, data
    assert [p["status"] for p in data["exercises"]["lora_layer"]["properties"]].count("FAIL") == 1, data
    assert data["exercises"]["nf4"]["held"] == 0 and data["exercises"]["nf4"]["total"] == 10, data
    assert data["bug_lab"]["caught"] == 8 and data["bug_lab"]["total"] == 10, data
    assert data["bug_lab"]["bugs"]["random_B_init"]["status"] == "slipped", data


def test_class_grader_passes_the_solutions_and_fails_the_skeletons(tmp_path):
    submissions, out = tmp_path / "submissions", tmp_path / "grades"
    shutil.copytree(SOLUTIONS_DIR, submissions / "alice", ignore=shutil.ignore_patterns("__pycache__"))
    (submissions / "bob").mkdir()
    for name in SKELETONS:
        shutil.copy(EXERCISE_DIR / f"{name}.py", submissions / "bob")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "grade_class.py"), str(submissions), "--out", str(out)],
                          cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # bob has done nothing yet
    rows = {r["student"]: r for r in csv.DictReader((out / "grades.csv").open())}
    assert rows["alice"]["passed"] == "True" and rows["bob"]["passed"] == "False", rows
    assert rows["alice"]["lora_layer"] == "5/5" and rows["bob"]["lora_layer"] == "0/5", rows
    assert rows["alice"]["bug_lab"] == "10/10" and rows["bob"]["bug_lab"] == "0/10", rows
    alice, bob = (out / "alice.log").read_text(), (out / "bob.log").read_text()
    assert re.search(r"all \d+ graded checks hold", alice) and " passed" in alice and "failed" not in alice, alice
    assert re.search(r"not passed: 0 of (\d+) graded checks hold \(0 FAIL, \1 todo\); exit code 1", bob), bob
    assert "lora_layer: 0 of 5 properties hold" in bob and "delta_weight() not implemented yet" in bob, bob
    assert "LinearNF4.__init__() not implemented yet" in bob and "test_missing_scaling() not implemented yet" in bob, bob
    assert not list((submissions / "bob").glob("__pycache__")), "grading wrote into a submission"


@pytest.mark.parametrize("impl", ["no-such-folder", "README.md"])
def test_a_bad_impl_is_one_usage_error(impl):
    code, out = grade(ROOT / impl)
    assert code == pytest.ExitCode.USAGE_ERROR, out
    assert out.count("ERROR:") == 1 and "Traceback" not in out and len(out.splitlines()) <= 3, out
    assert ("does not exist" if impl.startswith("no-") else "is a file") in out, out


def test_a_property_that_hangs_fails_on_time(tmp_path):
    source = (EXERCISE_DIR / "params.py").read_text().replace("raise NotImplementedError", "while True:\n        pass", 1)
    (tmp_path / "params.py").write_text(source)
    code, out = grade(tmp_path, "-k", "params", "--time-limit", "0.5", files=("tests/test_exercises.py",))
    assert code == 1, out
    assert "FAIL count is linear in rank and symmetric  -- the property did not return within 0.5 s" in out, out


def test_the_time_limit_holds_off_the_main_thread_too():
    # the thread fallback (Windows, or a grader run from a thread): a hang fails, a result or a skip comes back
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
