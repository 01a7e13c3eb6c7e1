"""What a grading run reports: the terminal summary and the JSON file of --report (docs/exercises.md).

The grades come from tests/exercise_grading.py: one Grade per graded test (kind "exercise" or "bug",
its unit, its property, status "ok" | "FAIL" | "todo" and why). A planted bug has two graded tests,
the student's test on the library (it must pass) and on the bug (it must fail); it is caught when both
hold.
"""

import json
import os
import tempfile
from pathlib import Path

LIBRARY, BUG = "passes on the library", "fails on the bug"


def all_hold(grades):
    return all(g.status == "ok" for g in grades.values())


def units(grades, kind):
    """{unit: [its grades]} for one kind, in run order."""
    out = {}
    for g in grades.values():
        if g.kind == kind:
            out.setdefault(g.unit, []).append(g)
    return out


def bug_verdict(checks):
    """(status, message) of one planted bug from its graded tests: caught | slipped | wrong | todo."""
    by_prop = {g.prop: g for g in checks}
    todo = [g for g in checks if g.status == "todo"]
    if todo:
        return "todo", todo[0].why
    library, bug = by_prop.get(LIBRARY), by_prop.get(BUG)
    if library is not None and library.status != "ok":
        return "wrong", f"your test fails on the correct library: {library.why}"
    if bug is not None and bug.status != "ok":
        return "slipped", bug.why
    return "caught", ""


def report_data(impl, grades, time_limit):
    """The JSON report: per exercise the properties held of the total, and the bug lab's catches."""
    exercises = {}
    for name, results in units(grades, "exercise").items():
        held = sum(g.status == "ok" for g in results)
        exercises[name] = {"held": held, "total": len(results), "passed": held == len(results),
                           "properties": [{"property": g.prop, "status": g.status, "message": g.why,
                                           "calls": list(g.calls)} for g in results]}
    bugs = {name: dict(zip(("status", "message"), bug_verdict(checks), strict=True))
            for name, checks in units(grades, "bug").items()}
    caught = sum(b["status"] == "caught" for b in bugs.values())
    lab = {"caught": caught, "total": len(bugs), "passed": caught == len(bugs), "bugs": bugs} if bugs else None
    return {
        "impl": impl.name, "folder": str(impl.folder), "time_limit_s": time_limit,
        "passed": all_hold(grades) and bool(grades),
        "exercises": exercises,
        "bug_lab": lab,  # None when the run graded no bug (tests/test_bug_lab.py not run, or -k left them out)
    }


def write_report(path, impl, grades, time_limit):
    """Write the JSON report to `path` through a temporary file, so a reader never sees half of it."""
    path = Path(path)
    text = json.dumps(report_data(impl, grades, time_limit), indent=2, ensure_ascii=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.resolve().parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_summary(tr, impl, grades):
    """The grading section at the end of pytest's output."""
    where = impl.folder.relative_to(Path.cwd()) if impl.folder.is_relative_to(Path.cwd()) else impl.folder
    tr.section(f"graded from {where}")
    for exercise, results in units(grades, "exercise").items():
        held = sum(g.status == "ok" for g in results)
        tr.write_line(f"{exercise}: {held} of {len(results)} properties hold")
        if len({(g.status, g.why) for g in results}) == 1 and results[0].status == "todo":
            tr.write_line(f"  todo {results[0].why}")  # one reason for all: say it once
            continue
        for g in results:
            tr.write_line(f"  {g.status:<4} {g.prop}" + (f"  -- {g.why}" if g.why else ""))
    bugs = {name: bug_verdict(checks) for name, checks in units(grades, "bug").items()}
    if bugs:
        caught = sum(status == "caught" for status, _ in bugs.values())
        tr.write_line(f"bug lab: {caught} of {len(bugs)} bugs caught")
        if len(set(bugs.values())) == 1 and next(iter(bugs.values()))[0] == "todo":
            tr.write_line(f"  todo {next(iter(bugs.values()))[1]}")
        else:
            for name, (status, why) in bugs.items():
                tr.write_line(f"  {status:<7} {name}" + (f"  -- {why}" if why else ""))
    counts = {s: sum(g.status == s for g in grades.values()) for s in ("ok", "FAIL", "todo")}
    if all_hold(grades):
        tr.write_line(f"all {counts['ok']} graded checks hold", green=True)
    else:
        tr.write_line(f"not passed: {counts['ok']} of {len(grades)} graded checks hold "
                      f"({counts['FAIL']} FAIL, {counts['todo']} todo); exit code 1", red=True)
