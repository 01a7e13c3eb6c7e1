"""Every plotting cell of every committed notebook carries its figure, at a size a laptop screen shows.

A figure is lost silently: run a notebook with MPLBACKEND=Agg (or from a script) and plt.show()
draws nothing inline, the cell still succeeds, and the committed file has no image. These tests read
each committed notebook, find the cells that draw, and require a PNG in each one's outputs.

A cell draws when a statement it runs (not a definition it makes) calls
- a matplotlib plotting function or Axes method (plt.show, plt.subplots, ax.plot, imshow, scatter,
  bar, hist, ...; see PLOT_CALLS),
- a function or class defined in an earlier cell (or the same one) whose body draws (a live-loss
  callback, a helper that plots), or
- a library function of lora/ or minigpt/ whose source draws with pyplot (a plotting helper).
Functions that write a PNG file with matplotlib's Agg canvas (minigpt.finetune.rundir.save_loss_curve)
do not draw inline and are not counted.
"""

import ast
import importlib
import inspect
import struct
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
FIRST_PARTY = ("lora", "minigpt")

# matplotlib calls that create or draw a figure (pyplot functions and Axes/Figure methods alike)
PLOT_CALLS = {
    "show", "subplots", "figure", "subplot", "subplot_mosaic", "imshow", "matshow", "pcolormesh", "pcolor",
    "contour", "contourf", "plot", "scatter", "bar", "barh", "hist", "hist2d", "semilogx", "semilogy", "loglog",
    "fill_between", "fill_betweenx", "errorbar", "stairs", "stem", "pie", "boxplot", "violinplot",
    "vlines", "hlines", "axhline", "axvline", "axhspan", "axvspan", "annotate", "quiver", "spy", "heatmap",
}
# readable on a laptop screen: wide enough to read its labels, small enough to fit without scrolling
MIN_WIDTH_PX, MAX_WIDTH_PX, MIN_HEIGHT_PX, MAX_HEIGHT_PX = 360, 1400, 140, 900


def _called_name(call):
    """'show' for plt.show(...), 'LiveLoss' for LiveLoss(...), None for anything else (a lambda call, ...)."""
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None


def _calls(nodes):
    return [n for node in nodes for n in ast.walk(node) if isinstance(n, ast.Call)]


def _executed(tree):
    """The statements a cell runs when executed: everything but the bodies of its defs and classes
    (default arguments and decorators do run, but never draw in practice)."""
    return [s for s in tree.body if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]


def _library_draws(module, name):
    """True if `name` imported from the first-party `module` is a callable whose source draws with pyplot."""
    try:
        obj = getattr(importlib.import_module(module), name)
        source = inspect.getsource(obj)
    except (ImportError, AttributeError, OSError, TypeError):
        return False
    return "pyplot" in source or "plt." in source


class PlotFinder:
    """Walks a notebook's code cells in order, remembering which names draw when called."""

    def __init__(self, first_party=FIRST_PARTY):
        self.first_party, self.drawing = first_party, set()

    def _imports(self, tree):
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in self.first_party:
                for alias in node.names:
                    if _library_draws(node.module, alias.name):
                        self.drawing.add(alias.asname or alias.name)

    def _draws(self, nodes):
        return any(_called_name(c) in PLOT_CALLS or _called_name(c) in self.drawing for c in _calls(nodes))

    def cell_draws(self, source):
        """Whether running this cell draws a figure; records the functions and classes it defines that draw."""
        try:
            tree = ast.parse(source)
        except SyntaxError:  # IPython magics: not used in our notebooks; count it as drawing if it says so
            return "plt." in source
        self._imports(tree)
        for node in tree.body:  # a helper drawing in its body draws when called, in this cell or a later one
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and self._draws(node.body):
                self.drawing.add(node.name)
        return self._draws(_executed(tree))


def png_size(data):
    """(width, height) in pixels of a base64-encoded PNG, from its IHDR chunk."""
    import base64

    raw = base64.b64decode(data)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", raw[16:24])


def images(cell):
    return [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]


def figure_problems(nb):
    """What is wrong with the figures of a notebook: a list of messages, empty when every plotting cell
    holds a PNG of a readable size (one per plt.show() it calls at least)."""
    finder, problems = PlotFinder(), []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not finder.cell_draws(cell.source):
            continue
        pngs = images(cell)
        shows = sum(1 for c in _calls(_executed(ast.parse(cell.source))) if _called_name(c) == "show")
        first = cell.source.strip().splitlines()[0][:60] if cell.source.strip() else ""
        if not pngs:
            problems.append(f"cell {i} ({first!r}) draws a figure but its committed outputs hold no image")
        elif len(pngs) < shows:
            problems.append(f"cell {i} ({first!r}) calls plt.show() {shows} times but holds {len(pngs)} images")
        for data in pngs:
            w, h = png_size(data)
            if not (MIN_WIDTH_PX <= w <= MAX_WIDTH_PX and MIN_HEIGHT_PX <= h <= MAX_HEIGHT_PX):
                problems.append(f"cell {i} ({first!r}): a {w}x{h} px figure; keep it within "
                                f"{MIN_WIDTH_PX}-{MAX_WIDTH_PX} x {MIN_HEIGHT_PX}-{MAX_HEIGHT_PX} px")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_plotting_cell_carries_a_readable_figure(path):
    problems = figure_problems(nbformat.read(path, as_version=4))
    assert not problems, ("\n".join(problems) + "\nre-run the notebook in full mode with figures inline: "
                          f"python notebooks/refresh.py --only {path.name[:2]}")


def test_a_plotting_cell_whose_image_was_lost_is_caught():
    # the committed notebooks must give the check something to find: strip one real figure and it fails
    path = next(p for p in NOTEBOOKS if images_in(p))
    nb = nbformat.read(path, as_version=4)
    assert not figure_problems(nb)
    cell = next(c for c in nb.cells if c.cell_type == "code" and images(c))
    cell.outputs = [o for o in cell.outputs if "image/png" not in o.get("data", {})]
    assert any("hold no image" in p for p in figure_problems(nb))


def images_in(path):
    return sum(len(images(c)) for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")


@pytest.mark.parametrize("source", [
    "plt.show()",
    "fig, ax = plt.subplots()\nax.set(xlabel='x')",
    "plt.imshow(M)",
    "ax.plot([1, 2])",
    "axes[0].scatter(x, y)",
    "ax.bar(range(3), h)",
    "ax.hist(errors, bins=50)",
    "for a in axes:\n    a.semilogy(s)",
    "with torch.no_grad():\n    draw_spectrum(S)",                 # a helper defined in an earlier cell
    "live = LiveLoss('title')\ntrain(model, callback=live)",       # a class whose __init__ draws
    "from minigpt.bench.harness import ms\nfig = plt.figure()",    # a plain figure call after an import
])
def test_cells_that_draw_are_recognised(source):
    finder = PlotFinder()
    assert not finder.cell_draws("def draw_spectrum(S):\n    plt.semilogy(S)\n    plt.show()")  # a definition draws nothing
    assert not finder.cell_draws("class LiveLoss:\n    def __init__(self, title):\n        self.fig, self.ax = plt.subplots()")
    assert finder.cell_draws(source)


@pytest.mark.parametrize("source", [
    "plt.rcParams.update({'figure.dpi': 80})",
    "import matplotlib.pyplot as plt",
    "def later():\n    plt.show()",
    "from minigpt.finetune.rundir import save_loss_curve\nsave_loss_curve([1.0], [(0, 1.0)], 'c.png', 't')",  # a file, not inline
    "x = torch.linspace(0, 1, 5)\nprint(x.sum())",
])
def test_cells_that_do_not_draw_are_not_counted(source):
    assert not PlotFinder().cell_draws(source)


def test_a_library_plotting_helper_is_recognised(monkeypatch, tmp_path):
    # a first-party helper that draws with pyplot (for instance NF4 level figures) makes its caller a plotting cell
    pkg = tmp_path / "plothelpers"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import matplotlib.pyplot as plt\n\ndef level_figure(levels):\n"
                                     "    fig, ax = plt.subplots()\n    ax.plot(levels)\n    return fig\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    finder = PlotFinder(first_party=("plothelpers",))
    assert finder.cell_draws("from plothelpers import level_figure\nlevel_figure([0, 1])")
    assert not PlotFinder(first_party=("plothelpers",)).cell_draws("from plothelpers import level_figure")
