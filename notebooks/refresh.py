"""Re-run the notebooks in full mode and bring what the docs say about them up to date.

    python notebooks/refresh.py                 # every notebook, in order (times: docs/README.md)
    python notebooks/refresh.py --only 05 07    # the notebooks whose names start with 05 or 07
    python notebooks/refresh.py --docs-only     # run nothing: rewrite the docs from the committed outputs
    python notebooks/refresh.py --check         # run nothing, change nothing: list what disagrees
    python notebooks/refresh.py --only 07 --solutions   # and the worked solutions of docs/exercises.md

For each notebook it
1. runs it top to bottom in a fresh kernel, in full mode, with figures inline, and saves it in place:
   the committed outputs (cwd notebooks/, NB_FAST unset, OMP_NUM_THREADS=1 so that the digits do not
   depend on the core count, and this checkout first on PYTHONPATH so that its own code runs);
2. times that run: wall time, CPU time of the kernel (user + sys), the load average before and after;
3. runs it again in fast mode (NB_FAST=1, what the tests run), in memory, and times that (--no-fast skips it);
with --solutions it also runs, after the notebook's last cell and in the same kernel, that notebook's
worked solutions (the python blocks of its section of docs/exercises.md), and saves what they print in
tests/fixtures/solution_outputs/<notebook>.txt; and then it
4. rewrites every number the docs quote from a notebook (the claims of tests/fixtures/doc_claims.json,
   which tests/test_doc_claims.py checks against the committed outputs), and
5. writes the times into the course guide's table (docs/README.md, "Time per notebook").

A claim is {"doc", "notebook", "output", "quote"}: `output` is a regular expression searched in the
notebook's outputs (stream text, text/plain and text/markdown), whose named groups are the numbers;
`quote` is the text the doc holds, with {name} or {name:.2f} fields filled from those groups
("minus": "−" writes negative numbers with a minus sign instead of a hyphen; "from": "solutions" reads
the worked solutions' saved output instead; "rewrite": false marks a quote that comes from another
command, which the refresh only checks, and "remedy" says how to measure it again). A doc is README.md, a file under docs/ or a notebook (its
markdown cells). A notebook that fails keeps its committed file,
and its claims are left as they were; the command then exits with status 1.
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import string
import sys
import time
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parent
ROOT = NOTEBOOK_DIR.parent
CLAIMS = ROOT / "tests" / "fixtures" / "doc_claims.json"
GUIDE = ROOT / "docs" / "README.md"
EXERCISES = ROOT / "docs" / "exercises.md"
SOLUTION_OUTPUTS = ROOT / "tests" / "fixtures" / "solution_outputs"
TIMES_START = "<!-- notebook times: written by `python notebooks/refresh.py`; edits by hand are overwritten -->"
TIMES_END = "<!-- /notebook times -->"
NUMBER = r"[-+−]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?"
CELL_TIMEOUT_S = 1800


# ---------------------------------------------------------------------------------------------------------
# the claims: numbers a doc quotes from a notebook's outputs
# ---------------------------------------------------------------------------------------------------------

class ClaimError(ValueError):
    """A claim that cannot be evaluated: its notebook no longer prints what the claim reads."""


def output_text(nb):
    """Everything a notebook's code cells printed or displayed as text, one output after the other."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out:
                parts += [out["data"].get(k, "") for k in ("text/markdown", "text/plain")]
    return "\n".join(parts)


def markdown_text(nb):
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


class _QuoteFormatter(string.Formatter):
    """str.format where a field with a format spec reads its captured text as a number first."""

    def format_field(self, value, spec):
        if spec:
            try:
                value = float(value.replace(",", "").replace("−", "-"))
            except ValueError:
                raise ClaimError(f"{value!r} is where the claim reads a number") from None
        return format(value, spec)


def claim_values(claim, outputs):
    """The named groups of the claim's `output` pattern, from the first match in `outputs`."""
    m = re.search(claim["output"], outputs)
    if m is None:
        raise ClaimError(f"notebook {claim['notebook']} prints nothing matching {claim['output']!r}")
    return m.groupdict()


def _pieces(claim, values):
    """The rendered quote as (text, is_a_field) pieces."""
    fmt, pieces = _QuoteFormatter(), []
    for literal, field, spec, _ in string.Formatter().parse(claim["quote"]):
        pieces.append((literal, False))
        if field is not None:
            text = fmt.format_field(values[field], spec or "")
            pieces.append((text.replace("-", claim["minus"]) if claim.get("minus") else text, True))
    return pieces


def render(claim, values):
    """The text the doc should hold for these values."""
    return "".join(text for text, _ in _pieces(claim, values))


def field_spans(claim, values):
    """(start, end) of each number in render(claim, values)."""
    spans, pos = [], 0
    for text, is_field in _pieces(claim, values):
        if is_field:
            spans.append((pos, pos + len(text)))
        pos += len(text)
    return spans


def quote_pattern(claim):
    """A regex matching the claim's quote with any numbers in its fields (to find the old text in the doc)."""
    out = []
    for literal, field, _, _ in string.Formatter().parse(claim["quote"]):
        out.append(re.escape(literal))
        if field is not None:
            out.append(NUMBER)
    return "".join(out)


def notebook_path(stem):
    path = NOTEBOOK_DIR / f"{stem}.ipynb"
    if not path.is_file():
        raise ClaimError(f"no notebook {path.relative_to(ROOT)}")
    return path


def doc_text(doc):
    """The text of a doc as the claims see it (a notebook: its markdown cells)."""
    path = ROOT / doc
    if path.suffix == ".ipynb":
        import nbformat

        return markdown_text(nbformat.read(path, as_version=4))
    return path.read_text(encoding="utf-8")


def check_claim(claim, outputs, text):
    """None if `text` (the doc) holds the quote that `outputs` (the notebook's) give, else what is wrong."""
    try:
        expected = render(claim, claim_values(claim, outputs))
    except ClaimError as e:
        where = "" if str(e).startswith("notebook") else f"notebook {claim['notebook']}: "
        return f"{claim['doc']}: {where}{e}"
    if expected in text:
        return None
    found = re.findall(quote_pattern(claim), text)
    now = f"it says {found[0]!r}" if found else "the quote is not there at all"
    remedy = f"; {claim['remedy']}" if claim.get("remedy") else ""
    return f"{claim['doc']} should say {expected!r} (notebook {claim['notebook']}'s outputs); {now}{remedy}"


def load_claims(path=CLAIMS):
    claims = json.loads(Path(path).read_text(encoding="utf-8"))
    for c in claims:
        missing = {"doc", "notebook", "output", "quote"} - set(c)
        if missing:
            raise ValueError(f"claim {c!r} lacks {sorted(missing)}")
    return claims


def claim_outputs(claim):
    """The text a claim reads its numbers from: the notebook's committed outputs, or (with "from":
    "solutions") what its worked solutions printed at the last `refresh.py --solutions`."""
    import nbformat

    if claim.get("from") == "solutions":
        path = SOLUTION_OUTPUTS / f"{claim['notebook']}.txt"
        if not path.is_file():
            raise ClaimError(f"no {path.relative_to(ROOT)}: run python notebooks/refresh.py --only "
                             f"{claim['notebook'][:2]} --solutions")
        return path.read_text(encoding="utf-8")
    return output_text(nbformat.read(notebook_path(claim["notebook"]), as_version=4))


def check_claims(claims):
    """Every problem with the claims against the committed notebooks and docs (an empty list: all hold)."""
    outputs, texts, problems = {}, {}, []
    for c in claims:
        key = (c["notebook"], c.get("from"))
        try:
            if key not in outputs:
                outputs[key] = claim_outputs(c)
        except ClaimError as e:
            problems.append(f"{c['doc']}: {e}")
            continue
        if c["doc"] not in texts:
            texts[c["doc"]] = doc_text(c["doc"])
        problem = check_claim(c, outputs[key], texts[c["doc"]])
        if problem:
            problems.append(problem)
    return problems


def _replace_once(claim, text, new):
    pattern = quote_pattern(claim)
    hits = len(re.findall(pattern, text))
    if hits != 1:
        raise ClaimError(f"{claim['doc']}: the quote {claim['quote']!r} matches {hits} places; "
                         "make it longer so that it names one")
    return re.sub(pattern, lambda _: new, text)


def apply_claims(claims, notebooks=None):
    """Rewrite the docs' quotes from the committed outputs (only the claims of `notebooks`, if given).

    Returns the docs changed and the problems met (a claim whose notebook does not print its number).
    """
    import nbformat

    by_doc, problems = {}, []
    for c in claims:
        if notebooks is not None and c["notebook"] not in notebooks or c.get("rewrite") is False:
            continue
        try:
            new = render(c, claim_values(c, claim_outputs(c)))
        except ClaimError as e:
            problems.append(str(e))
            continue
        by_doc.setdefault(c["doc"], []).append((c, new))
    changed = []
    for doc, edits in by_doc.items():
        path = ROOT / doc
        try:
            if path.suffix == ".ipynb":
                nb = nbformat.read(path, as_version=4)
                before = json.dumps(nb, sort_keys=True)
                for c, new in edits:
                    cells = [cell for cell in nb.cells if cell.cell_type == "markdown"
                             and re.search(quote_pattern(c), cell.source)]
                    if len(cells) != 1:
                        raise ClaimError(f"{doc}: the quote {c['quote']!r} matches {len(cells)} markdown cells")
                    cells[0].source = _replace_once(c, cells[0].source, new)
                if json.dumps(nb, sort_keys=True) != before:
                    nbformat.write(nb, path)
                    changed.append(doc)
            else:
                text = original = path.read_text(encoding="utf-8")
                for c, new in edits:
                    text = _replace_once(c, text, new)
                if text != original:
                    path.write_text(text, encoding="utf-8")
                    changed.append(doc)
        except ClaimError as e:
            problems.append(str(e))
    return changed, problems


# ---------------------------------------------------------------------------------------------------------
# running a notebook, and the course guide's time table
# ---------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def environment(**changes):
    """os.environ with `changes` (a value of None removes the variable), for a kernel started inside."""
    saved = dict(os.environ)
    for k, v in changes.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _load():
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


CPU_PROBE = "import os as _os\n_t = _os.times()\nprint('cpu seconds', _t.user + _t.system + _t.children_user + _t.children_system)"


def _client(nb, timeout, extra):
    """An nbclient client that runs the notebook, notes when its last cell ended, then runs `extra`
    cells in the same kernel (they are not added to the notebook)."""
    from nbclient import NotebookClient
    from nbclient.client import ensure_async, run_sync

    class Client(NotebookClient):
        async def async_execute(self, reset_kc=False, **kwargs):
            self.reset_execution_trackers()
            async with self.async_setup_kernel(**kwargs):
                reply = await self.async_wait_for_reply(await ensure_async(self.kc.kernel_info()))
                if reply is not None and "language_info" in reply["content"]:
                    self.nb.metadata["language_info"] = reply["content"]["language_info"]
                for index, cell in enumerate(self.nb.cells):
                    await self.async_execute_cell(cell, index, execution_count=self.code_cells_executed + 1)
                self.set_widgets_metadata()
                self.finished = time.monotonic()
                n = len(self.nb.cells)
                self.nb.cells.extend(extra)  # nbclient writes a cell back by its index: they must be in the notebook
                try:
                    for i, cell in enumerate(extra):
                        await self.async_execute_cell(cell, n + i, store_history=False)
                finally:
                    del self.nb.cells[n:]
            return self.nb

        def execute(self, **kwargs):  # NotebookClient.execute wraps its own async_execute, not an override
            return run_sync(self.async_execute)(**kwargs)

    return Client(nb, kernel_name="python3", timeout=timeout, resources={"metadata": {"path": str(NOTEBOOK_DIR)}})


def run_notebook(path, fast, threads, timeout=CELL_TIMEOUT_S, snippets=()):
    """Execute the notebook at `path` in a fresh kernel; returns (executed notebook, timing, snippet outputs).

    The kernel inherits this process's environment with NB_FAST set (fast) or removed (full),
    figures inline, OMP_NUM_THREADS = threads and this checkout first on PYTHONPATH. After the last
    cell the kernel reports its CPU time, then runs `snippets` (code strings) as extra cells, whose
    printed text is returned, one string each (a snippet that raises returns its traceback's text).
    Raises nbclient's CellExecutionError (naming the cell) when a cell of the notebook fails.
    """
    import nbformat

    nb = nbformat.read(path, as_version=4)
    probe = nbformat.v4.new_code_cell(CPU_PROBE)
    extra = [probe] + [nbformat.v4.new_code_cell(s, metadata={"tags": ["raises-exception"]}) for s in snippets]
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(NB_FAST="1" if fast else None, OMP_NUM_THREADS=str(threads), PYTHONPATH=pythonpath,
               MPLBACKEND="Agg" if fast else "module://matplotlib_inline.backend_inline")
    load_before, t0 = _load(), time.monotonic()
    client = _client(nb, timeout, extra)
    with environment(**env):
        client.execute()
    m = re.search(r"cpu seconds ([\d.]+)", _cell_text(probe))
    timing = dict(wall=client.finished - t0, cpu=float(m.group(1)) if m else None, load=(load_before, _load()))
    return nb, timing, [_cell_text(c) for c in extra[1:]]


def _cell_text(cell):
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif out.get("output_type") == "error":
            parts.append(f"ERROR {out.get('ename')}: {out.get('evalue')}\n")
        elif "data" in out and "image/png" not in out["data"]:  # a figure's text is only its repr
            parts.append(out["data"].get("text/markdown") or out["data"].get("text/plain", ""))
    return "".join(parts)


def solution_snippets(stem, text=None):
    """The python blocks of docs/exercises.md's worked solutions for notebook `stem` (its "## NN" section), in order."""
    text = EXERCISES.read_text(encoding="utf-8") if text is None else text
    solutions = text.split("\n# Worked solutions", 1)[-1]
    m = re.search(rf"^## {re.escape(stem[:2])} .*?(?=^## |\Z)", solutions, re.M | re.S)
    return re.findall(r"```python\n(.*?)```", m.group(), re.S) if m else []


def write_solution_outputs(stem, snippets, outputs):
    """What the worked solutions printed, into tests/fixtures/solution_outputs/<stem>.txt (the claims read it)."""
    SOLUTION_OUTPUTS.mkdir(parents=True, exist_ok=True)
    parts = [f"# printed by the worked solutions for {stem} in docs/exercises.md, run after the notebook's last\n"
             f"# cell in full mode by `python notebooks/refresh.py --only {stem[:2]} --solutions`\n"]
    for i, (code, out) in enumerate(zip(snippets, outputs, strict=True), 1):
        parts.append(f"\n## snippet {i}: {code.strip().splitlines()[0]}\n{out}")
    (SOLUTION_OUTPUTS / f"{stem}.txt").write_text("".join(parts), encoding="utf-8")


def saved_solution_outputs(stem):
    """{snippet number (1-based): what it printed} from tests/fixtures/solution_outputs/<stem>.txt."""
    path = SOLUTION_OUTPUTS / f"{stem}.txt"
    if not path.is_file():
        raise ClaimError(f"no {path.relative_to(ROOT)}: run python notebooks/refresh.py --only {stem[:2]} --solutions")
    parts = re.split(r"^## snippet (\d+): .*\n", path.read_text(encoding="utf-8"), flags=re.M)
    return {int(n): out for n, out in zip(parts[1::2], parts[2::2], strict=True)}


def printed_blocks(text=None):
    """The ```text blocks of the worked solutions that show what a snippet printed: one after a snippet,
    before the next snippet or section. Returns [(stem, snippet number, start, end)], start:end the
    block's content in docs/exercises.md."""
    text = EXERCISES.read_text(encoding="utf-8") if text is None else text
    offset = text.index("\n# Worked solutions") if "\n# Worked solutions" in text else 0
    stems = {s[:2]: s for s in (p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))}
    blocks = []
    for section in re.finditer(r"^## (\d\d) .*?(?=^## |\Z)", text[offset:], re.M | re.S):
        stem, base = stems.get(section.group(1)), offset + section.start()
        fences = list(re.finditer(r"```(python|text)\n(.*?)```", section.group(), re.S))
        k = 0
        for i, f in enumerate(fences):
            if f.group(1) == "python":
                k += 1
            elif k and stem and fences[i - 1].group(1) == "python":
                blocks.append((stem, k, base + f.start(2), base + f.end(2)))
    return blocks


def check_printed(text=None):
    """Problems with the printed blocks: each must be what its snippet printed at the last --solutions run."""
    text = EXERCISES.read_text(encoding="utf-8") if text is None else text
    problems = []
    for stem, k, start, end in printed_blocks(text):
        try:
            printed = saved_solution_outputs(stem).get(k)
        except ClaimError as e:
            problems.append(f"docs/exercises.md: {e}")
            continue
        if printed is None or printed.strip() != text[start:end].strip():
            problems.append(f"docs/exercises.md: the printed block after snippet {k} of {stem}'s solutions is not "
                            f"what the snippet printed:\n{text[start:end].strip()}\n--- printed ---\n{(printed or '').strip()}")
    return problems


def apply_printed(stems):
    """Rewrite the printed blocks of the notebooks `stems` from their saved solution outputs."""
    text = original = EXERCISES.read_text(encoding="utf-8")
    for stem, k, start, end in reversed(printed_blocks(text)):
        if stem in stems:
            printed = saved_solution_outputs(stem).get(k)
            if printed is not None:
                text = text[:start] + printed.strip("\n") + "\n" + text[end:]
    if text != original:
        EXERCISES.write_text(text, encoding="utf-8")
        return True
    return False


def duration(seconds):
    """'7 s', '1 min 06 s'."""
    s = round(seconds)
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60:02d} s"


def parse_duration(text):
    """Seconds from duration()'s text (or None for anything else, such as 'not measured')."""
    m = re.fullmatch(r"(?:(\d+) min )?(\d+) s", text.strip())
    return None if m is None else 60 * int(m.group(1) or 0) + int(m.group(2))


def device_of(nb):
    """The device the notebook says it ran on ("device: cuda | FAST=False" in its first cell), else 'cpu'."""
    m = re.search(r"device: (\w+)", output_text(nb))
    return m.group(1) if m else "cpu"


COLUMNS = ["notebook", "full mode: wall time", "full mode: CPU time (user + sys)", "load average (start → end)",
           "fast mode (`NB_FAST=1`): wall time", "on a GPU"]


def _row_cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def time_rows(guide_text):
    """{notebook stem: row cells} from the guide's time table."""
    if TIMES_START not in guide_text or TIMES_END not in guide_text:
        raise ValueError(f"{GUIDE.relative_to(ROOT)} lacks the time table's markers {TIMES_START!r} ... {TIMES_END!r}")
    block = guide_text.split(TIMES_START, 1)[1].split(TIMES_END, 1)[0]
    rows = {}
    for line in block.splitlines():
        cells = _row_cells(line) if line.startswith("|") else []
        if cells and re.fullmatch(r"\d\d_\w+", cells[0]):
            rows[cells[0]] = cells
    return rows


def time_table(rows, stems, machine):
    """The guide's table (markdown, between the markers) for the notebooks `stems`, in order."""
    lines = [TIMES_START, "", f"Measured by `python notebooks/refresh.py` on {machine}. The wall time is what a "
             "student waits; the CPU time is about what the run needs from an idle core.", "",
             "| " + " | ".join(COLUMNS) + " |", "|---|---:|---:|---|---:|---|"]
    totals = [0.0, 0.0, 0.0]
    for stem in stems:
        cells = rows.get(stem) or [stem, "not measured", "not measured", "—", "not measured", "not measured"]
        lines.append("| " + " | ".join(cells) + " |")
        for i, col in enumerate((1, 2, 4)):
            t = parse_duration(cells[col])
            totals[i] = None if totals[i] is None or t is None else totals[i] + t
    sums = [duration(t) if t is not None else "not measured" for t in totals]
    lines += [f"| all {len(stems)}, one after the other | {sums[0]} | {sums[1]} | — | {sums[2]} | not measured |", "",
              TIMES_END]
    return "\n".join(lines)


def machine_description(threads):
    cpu = platform.processor() or platform.machine()
    try:
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    try:
        import torch

        torch_version = f"torch {torch.__version__}"
    except ImportError:
        torch_version = "torch not installed"
    return (f"{cpu}, {os.cpu_count()} cores, {torch_version}, Python {platform.python_version()}, "
            f"{threads} thread{'s' if threads != 1 else ''} (`OMP_NUM_THREADS={threads}`), "
            f"{datetime.date.today().isoformat()}")


def write_times(measured, threads, stems):
    """Put the `measured` rows ({stem: cells}) into the guide's table, keeping the rows of the others."""
    text = GUIDE.read_text(encoding="utf-8")
    rows = time_rows(text)
    rows.update(measured)
    block = time_table(rows, stems, machine_description(threads))
    head, rest = text.split(TIMES_START, 1)
    GUIDE.write_text(head + block + rest.split(TIMES_END, 1)[1], encoding="utf-8")


def row_for(stem, full, fast, device, old):
    """The table row of one notebook from its timings (`fast` None: keep the old fast-mode figure)."""
    old = old or [stem, "not measured", "not measured", "—", "not measured", "not measured"]
    load = full["load"]
    load_text = "—" if None in load else f"{load[0]:.1f} → {load[1]:.1f}"
    fast_text = duration(fast["wall"]) if fast else old[4]
    if device != "cpu":  # a GPU run: its wall time goes to the GPU column, the CPU columns stay
        return old[:4] + [fast_text, f"{duration(full['wall'])} ({device})"]
    cpu = "not measured" if full["cpu"] is None else duration(full["cpu"])
    return [stem, duration(full["wall"]), cpu, load_text, fast_text, old[5]]


def select(only):
    stems = [p.stem for p in sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))]
    if not only:
        return stems, stems
    chosen = [s for s in stems if any(s.startswith(o) for o in only)]
    unknown = [o for o in only if not any(s.startswith(o) for s in stems)]
    if unknown:
        raise SystemExit(f"--only {' '.join(unknown)}: no notebook starts with that; there are {stems}")
    return stems, chosen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--only", nargs="+", metavar="NN", help="notebooks whose names start with these (e.g. 05 07)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--docs-only", action="store_true", help="run nothing; rewrite the docs from the committed outputs")
    mode.add_argument("--check", action="store_true", help="run nothing, change nothing; list what disagrees")
    parser.add_argument("--no-fast", action="store_true", help="skip the fast-mode timing run")
    parser.add_argument("--solutions", action="store_true",
                        help="after each notebook, run its worked solutions (docs/exercises.md) in the same kernel and "
                             "save what they print in tests/fixtures/solution_outputs/")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the runs (default 1)")
    parser.add_argument("--timeout", type=int, default=CELL_TIMEOUT_S, help="seconds a cell may run (default 1800)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads {args.threads}: must be at least 1")
    claims = load_claims()
    stems, chosen = select(args.only)

    if args.check:
        problems = check_claims(claims) + check_printed()
        print("\n".join(problems) if problems else f"all {len(claims)} quoted numbers agree with the committed outputs")
        return 1 if problems else 0

    failed, measured = [], {}
    if not args.docs_only:
        import nbformat

        old_rows = time_rows(GUIDE.read_text(encoding="utf-8"))
        for stem in chosen:
            path = NOTEBOOK_DIR / f"{stem}.ipynb"
            snippets = solution_snippets(stem) if args.solutions else []
            print(f"{stem}: full mode{f' and {len(snippets)} worked solutions' if snippets else ''} ...", flush=True)
            try:
                nb, full, printed = run_notebook(path, fast=False, threads=args.threads, timeout=args.timeout,
                                                 snippets=snippets)
            except Exception as e:  # the committed notebook stays as it was
                print(f"{stem}: FAILED, left unchanged: {type(e).__name__}: {str(e)[-2000:]}", flush=True)
                failed.append(stem)
                continue
            nbformat.write(nb, path)
            if snippets:
                write_solution_outputs(stem, snippets, printed)
                broken = [i + 1 for i, out in enumerate(printed) if "ERROR " in out]
                if broken:
                    print(f"{stem}: worked solutions {broken} raised (see {SOLUTION_OUTPUTS.name}/{stem}.txt)", flush=True)
                    failed.append(stem)
            fast = None
            if not args.no_fast:
                print(f"{stem}: fast mode ...", flush=True)
                try:
                    fast = run_notebook(path, fast=True, threads=1, timeout=args.timeout)[1]
                except Exception as e:
                    print(f"{stem}: fast mode FAILED: {type(e).__name__}: {str(e)[-2000:]}", flush=True)
                    failed.append(stem)
            measured[stem] = row_for(stem, full, fast, device_of(nb), old_rows.get(stem))
            print(f"{stem}: {' | '.join(measured[stem][1:5])}", flush=True)
        if measured:
            write_times(measured, args.threads, stems)

    ran = set(chosen) - set(failed) if not args.docs_only else None
    if (args.solutions or args.docs_only) and apply_printed(set(stems) if ran is None else ran):
        print("rewrote the printed blocks of docs/exercises.md's worked solutions")
    changed, problems = apply_claims(claims, ran)
    for doc in changed:
        print(f"rewrote the quoted numbers in {doc}")
    problems += check_claims(claims) + check_printed()
    for p in problems:
        print(f"claim: {p}")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
