"""Grade a class's submissions with one command (docs/exercises.md, "For instructors").

    python tests/grade_class.py SUBMISSIONS [--out DIR] [--time-limit SECONDS]

SUBMISSIONS holds one folder per student, each with that student's files as they would sit in
notebooks/exercises/mine/ (lora_layer.py, ..., bug_lab.py; missing ones count as not done). Every
folder is graded in a fresh pytest process, exactly as the student grades it:

    pytest tests/test_exercises.py tests/test_bug_lab.py --impl=FOLDER --report DIR/STUDENT.json

The output goes to DIR/STUDENT.log, the JSON report to DIR/STUDENT.json (its format is in
docs/exercises.md), and one row per student to DIR/grades.csv: a column per exercise with the
properties held of the total, the bug lab's catches, and whether everything holds. Exit code 0 when
every submission passes, 1 when some does not, 2 for a usage error.

Grading runs the students' code: for submissions you do not trust, run this in a container or VM.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GRADED = ("tests/test_exercises.py", "tests/test_bug_lab.py")


def grade(folder, out, time_limit):
    """Grade one student's folder; returns the JSON report, or None if the run gave none (see the log)."""
    report, log = out / f"{folder.name}.json", out / f"{folder.name}.log"
    report.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1",  # leave the submission folder as it was
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("EXERCISE_IMPL", None)
    command = [sys.executable, "-m", "pytest", *GRADED, "-q", "-p", "no:cacheprovider", f"--impl={folder}",
               f"--report={report}", f"--time-limit={time_limit}"]
    with open(log, "w", encoding="utf-8") as f:
        subprocess.run(command, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, check=False)
    return json.loads(report.read_text(encoding="utf-8")) if report.is_file() else None


def row(student, data):
    """One line of grades.csv."""
    if data is None:
        return {"student": student, "passed": "error (see the log)"}
    cells = {name: f"{e['held']}/{e['total']}" for name, e in data["exercises"].items()}
    lab = data["bug_lab"] or {"caught": 0, "total": 0}
    return {"student": student, **cells, "bug_lab": f"{lab['caught']}/{lab['total']}", "passed": data["passed"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Grade every student folder of SUBMISSIONS (see the module docstring).")
    parser.add_argument("submissions", type=Path, help="a folder holding one folder per student")
    parser.add_argument("--out", type=Path, default=Path("grades"), help="where reports, logs and grades.csv go (default: ./grades)")
    parser.add_argument("--time-limit", type=float, default=20.0, help="seconds per graded property (default 20)")
    args = parser.parse_args(argv)
    if not args.submissions.is_dir():
        parser.error(f"{args.submissions} is not a folder")
    students = sorted(p for p in args.submissions.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not students:
        parser.error(f"{args.submissions} holds no student folders")
    if not args.time_limit >= 0:
        parser.error(f"--time-limit={args.time_limit}: give a number of seconds >= 0")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for folder in students:
        rows.append(row(folder.name, grade(folder.resolve(), args.out.resolve(), args.time_limit)))
        print(", ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    columns.append(columns.pop(columns.index("passed")))
    with open(args.out / "grades.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return 0 if all(r["passed"] is True for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
