"""Every number the docs quote from a notebook is in that notebook's committed outputs, and the run
times of the notebooks live in one place, the course guide's table.

The claims are listed in tests/fixtures/doc_claims.json: which doc quotes what (README.md, docs/*.md
or a notebook's own markdown), from which notebook, read from its outputs with which pattern.
`python notebooks/refresh.py` re-runs the notebooks and rewrites those quotes; these tests check
them against the committed files, so a doc that drifts from the outputs fails here.
"""

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
_spec = importlib.util.spec_from_file_location("refresh", ROOT / "notebooks" / "refresh.py")
refresh = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(refresh)
CLAIMS = refresh.load_claims()

# a run time: "5 min 00 s", "30 seconds", "2.5 minutes", "a few minutes", "in a second", "one-minute", "hours"
RUN_TIME = re.compile(r"\b\d+(?:\.\d+)?(?:\s*(?:-|to|–)\s*\d+(?:\.\d+)?)?[\s-]*(?:min|mins|minutes?|secs?|seconds?|s|h|hours?)\b"
                      r"|\b(?:a few|several|some|a couple of)\s+(?:seconds|minutes|hours)\b|\bin an? (?:second|minute|hour)\b"
                      r"|\b(?:a|an|one)[- ](?:minute|hour)\b|\bhours\b", re.I)


def outputs_of(claim):
    """The text the claim reads: its notebook's committed outputs, or what its worked solutions printed."""
    return refresh.claim_outputs(claim)


def claim_id(c):
    return f"{c['doc']}<-{c['notebook'][:2]}:{c['quote'][:50]}"


def test_the_claims_name_docs_and_notebooks_that_exist():
    assert CLAIMS, "tests/fixtures/doc_claims.json lists no claim"
    for c in CLAIMS:
        assert (ROOT / c["doc"]).is_file(), c
        refresh.notebook_path(c["notebook"])
        assert re.compile(c["output"]).groupindex, f"{c['output']!r} has no named group to read a number from"


@pytest.mark.parametrize("claim", CLAIMS, ids=[claim_id(c) for c in CLAIMS])
def test_every_quoted_number_is_in_the_notebooks_committed_outputs(claim):
    problem = refresh.check_claim(claim, outputs_of(claim), refresh.doc_text(claim["doc"]))
    assert problem is None, problem + " (python notebooks/refresh.py --docs-only rewrites it from the outputs)"


@pytest.mark.parametrize("claim", CLAIMS, ids=[claim_id(c) for c in CLAIMS])
def test_a_quoted_number_that_drifts_is_caught(claim):
    # plant the defect: one digit of the quote's first number changed, in the doc, then in the outputs
    outputs, text = outputs_of(claim), refresh.doc_text(claim["doc"])
    values = refresh.claim_values(claim, outputs)
    expected = refresh.render(claim, values)
    start, end = refresh.field_spans(claim, values)[0]
    i = max(j for j in range(start, end) if expected[j].isdigit())
    drifted = expected[:i] + str((int(expected[i]) + 1) % 10) + expected[i + 1:]
    assert refresh.check_claim(claim, outputs, text.replace(expected, drifted)) is not None
    name = next(iter(values))
    m = re.search(claim["output"], outputs)
    a, b = m.span(name)
    digit = max(j for j in range(a, b) if outputs[j].isdigit())
    moved = outputs[:digit] + str((int(outputs[digit]) + 5) % 10) + outputs[digit + 1:]
    if refresh.render(claim, refresh.claim_values(claim, moved)) != expected:  # a digit the quote shows
        assert refresh.check_claim(claim, moved, text) is not None
    assert re.fullmatch(refresh.quote_pattern(claim), expected), "the rewrite would not find the quote again"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_markdown_quotes_no_run_time(path):
    nb = nbformat.read(path, as_version=4)
    found = [(i, m.group()) for i, c in enumerate(nb.cells) if c.cell_type == "markdown" for m in RUN_TIME.finditer(c.source)]
    assert not found, (f"{path.name} quotes run times {found}: they go in the course guide's table "
                       "(docs/README.md#time-per-notebook), which the notebook links instead")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_header_links_to_the_course_guides_times(path):
    header = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown")
    assert "../docs/README.md#time-per-notebook" in header.source


def test_the_run_time_pattern_catches_the_phrasings_once_used():
    for text in ("about 5 min 00 s of CPU", "Time: about 30 seconds on a laptop", "2.5 to 5 minutes", "a 15-second smoke run",
                 "a one-minute smoke run", "2 to 6 minutes more", "expect hours", "a few minutes on a laptop CPU",
                 "loads it in a second", "each run adds about a minute"):
        assert RUN_TIME.search(text), text
    for text in ("4.127 bits", "rank 8 at 300 steps", "a second one is added", "W₀ (d_out × d_in)", "§5"):
        assert not RUN_TIME.search(text), text


def test_every_notebook_has_a_row_in_the_course_guides_time_table():
    rows = refresh.time_rows(refresh.GUIDE.read_text(encoding="utf-8"))
    missing = [p.stem for p in NOTEBOOKS if p.stem not in rows]
    assert not missing, f"docs/README.md's time table has no row for {missing}: python notebooks/refresh.py --only ..."
    for stem in (p.stem for p in NOTEBOOKS):
        assert refresh.parse_duration(rows[stem][1]) is not None, f"{stem}: full mode {rows[stem][1]!r} is not a time"


BLOCKS = refresh.printed_blocks()


@pytest.mark.parametrize("stem,snippet,start,end", BLOCKS, ids=[f"{b[0][:2]}-snippet{b[1]}" for b in BLOCKS])
def test_every_printed_block_of_the_worked_solutions_is_what_its_snippet_printed(stem, snippet, start, end):
    text = refresh.EXERCISES.read_text(encoding="utf-8")
    printed = refresh.saved_solution_outputs(stem).get(snippet)
    assert printed is not None and printed.strip() == text[start:end].strip(), (
        f"docs/exercises.md shows after snippet {snippet} of {stem}'s solutions what it no longer prints; "
        f"python notebooks/refresh.py --only {stem[:2]} --solutions (or --docs-only) rewrites it")


def test_a_printed_block_that_drifts_is_caught():
    assert BLOCKS, "the worked solutions show no printed block"
    text = refresh.EXERCISES.read_text(encoding="utf-8")
    assert not refresh.check_printed(text)
    stem, snippet, start, end = BLOCKS[0]
    i = max(j for j in range(start, end) if text[j].isdigit())
    drifted = text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1:]
    assert any(f"snippet {snippet} of {stem}" in p for p in refresh.check_printed(drifted))
