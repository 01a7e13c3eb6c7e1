"""`--impl`: fine-tune with the graded exercises' code (notebooks/exercises/) in place of the library's.

    python -m minigpt.finetune --impl mine        # notebooks/exercises/mine/, the student's copies
    python -m minigpt.finetune --impl solutions   # tests/exercise_solutions/, the worked solutions
    python -m minigpt.finetune --impl some/folder # any folder holding the exercise files

Which of the exercises' pieces build and train the model (PIECES):

    lora_layer.py        lora_forward (the forward pass without gradients: evaluation, sampling),
                         delta_weight, merge, unmerge (merged/ and the merge check)
    inject.py            inject_lora(model, targets, make_layer): which layers get an adapter, what trains
    lora_backward.py     lora_linear(x, W, b, A, B, scaling): the training forward pass and its backward
    nf4.py               quantize_blockwise, dequantize_blockwise: the 4-bit base (--method qlora)
    quantized_linear.py  LinearNF4: the frozen 4-bit layer holding it (--method qlora)

Before anything is built, the grader (tests/test_exercises.py, in a subprocess) proves the pieces'
properties; a piece that is not written yet or is wrong stops the run with one line naming the
function and the grader's hint. The rest of the run (data, optimiser, schedule, checkpoints, adapter
and merged files, report) is the library's, so with correct pieces a run gives the library's numbers.

The seam: ExerciseLoRALinear is a lora.LoRALinear whose arithmetic comes from the functions it is
given (a Pieces), so every library function that reads LoRA layers (count_parameters, save_adapter,
merge_and_unload, the trainer's checkpoints) works on the student's model unchanged. The exercise's
lora_linear(x, W, b, A, B, scaling) has the signature of lora.backward.lora_linear, the library's
training path; the library folds B A into W0 where the shapes make it pay, so the two agree to
float32 rounding (the printed losses), not bit for bit.

Shape legend: x (..., d_in), W (d_out, d_in), b (d_out,) or None, A (r, d_in), B (d_out, r).
"""

import dataclasses
import hashlib
import importlib.util
import json
import pathlib
import subprocess
import sys
import tempfile

import torch

from lora.inject import plan_lora
from lora.layer import LoRALinear
from lora.quant.nf4_linear import model_weight_bytes

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the repository: the exercises and the grader live there
EXERCISES = ROOT / "notebooks" / "exercises"
FOLDERS = {"solutions": ROOT / "tests" / "exercise_solutions", "mine": EXERCISES / "mine"}
GRADER = ROOT / "tests" / "test_exercises.py"
NF4_BLOCKSIZE = 64  # QLoRA's blocksize, as the library's quantize_model uses (no double quantisation here)
# exercise file -> the names a run takes from it
PIECES = {
    "lora_layer": ("lora_forward", "delta_weight", "merge", "unmerge"),
    "inject": ("inject_lora",),
    "lora_backward": ("lora_linear",),
    "nf4": ("quantize_blockwise", "dequantize_blockwise"),
    "quantized_linear": ("LinearNF4",),
}


def exercises_of(method):
    """The exercise files a run of `method` trains with (lora or qlora)."""
    return ("lora_layer", "inject", "lora_backward") + (("nf4", "quantized_linear") if method == "qlora" else ())


def impl_folder(impl):
    """The folder `impl` names: 'solutions', 'mine' or a path. Raises ValueError if it is not a folder."""
    folder = FOLDERS.get(impl) or pathlib.Path(impl).expanduser().resolve()
    if impl == "mine" and not folder.is_dir():
        raise ValueError("impl='mine' trains with notebooks/exercises/mine/, which does not exist yet; start with "
                         "mkdir -p notebooks/exercises/mine && cp notebooks/exercises/lora_layer.py "
                         "notebooks/exercises/inject.py notebooks/exercises/lora_backward.py notebooks/exercises/mine/ "
                         "(docs/exercises.md)")
    if not folder.is_dir():
        raise ValueError(f"impl={impl!r}: {folder} is not a folder; give 'solutions', 'mine' or a folder holding "
                         "your exercise files (lora_layer.py, inject.py, lora_backward.py, ...)")
    return folder


def check_impl(cfg):
    """Refuse an impl setting the exercises cannot run (raises ValueError); the grading comes later."""
    if cfg.impl is None:
        return
    if not isinstance(cfg.impl, str) or not cfg.impl:
        raise ValueError(f"impl={cfg.impl!r}: give 'solutions', 'mine' or a folder of exercise files")
    if cfg.method == "full":
        raise ValueError("impl: method='full' trains every weight and uses none of the exercises' pieces; "
                         "use method='lora' or 'qlora'")
    extras = {"dora": cfg.dora, "use_rslora": cfg.use_rslora, "init": cfg.init != "default", "dropout": cfg.dropout != 0}
    if any(extras.values()):
        raise ValueError(f"impl: the exercises are plain LoRA (α/r scaling, A Kaiming-uniform, B zero, no dropout); "
                         f"leave {', '.join(k for k, v in extras.items() if v)} at the default")
    impl_folder(cfg.impl)


# --- grading ---------------------------------------------------------------------------------------


def grading_command(impl, method):
    """The command (run from the repository's root) that shows every property of the pieces the run needs."""
    names = exercises_of(method)
    where = impl if impl in FOLDERS else impl_folder(impl)  # a folder by its absolute path: it works from the root
    return f'pytest tests/test_exercises.py --impl={where} -k "{" or ".join(names)}"'


def first_problem(report, method):
    """(exercise, property dict) of the first property that does not hold, in the order of exercises_of; or None."""
    for exercise in exercises_of(method):
        for prop in report["exercises"].get(exercise, {}).get("properties", []):
            if prop["status"] != "ok":
                return exercise, prop
    return None


def problem_line(impl, method, report):
    """One line saying which piece is not done or wrong, the grader's hint, and how to see the rest."""
    exercise, prop = first_problem(report, method)
    others = sum(p["status"] != "ok" for e in report["exercises"].values() for p in e["properties"]) - 1
    more = f" ({others} more {'property does' if others == 1 else 'properties do'} not hold)" if others > 0 else ""
    see = f"; the fine-tune trains with your {', '.join(f + '.py' for f in exercises_of(method))}: {grading_command(impl, method)}"
    message = prop["message"].removeprefix(f"exercise {exercise}: ")
    if prop["status"] == "todo":
        return f"impl={impl!r}: {exercise}.py is not done yet: {message}{more}{see}"
    calls = [c for c in prop.get("calls", []) if c in PIECES[exercise]] or prop.get("calls", [])
    named = ", ".join(f"{c}()" for c in calls) or exercise
    return f"impl={impl!r}: {exercise}.py: {named} fails '{prop['property']}': {message}{more}{see}"


_PASSED = {}  # (folder, method, digest of the files) -> report: a run, its estimate and a notebook grade once


def _digest(folder, names):
    h = hashlib.sha256()
    for name in names:
        path = folder / f"{name}.py"
        h.update(path.read_bytes() if path.is_file() else b"<absent>")
    return h.hexdigest()


def grade(impl, method, time_limit=20.0):
    """Run the grader on the pieces a `method` run needs; raise ValueError (one line) unless every property holds.

    The same files are graded once per process (the verdict is kept by their content).
    Returns:
        the grader's JSON report (see docs/exercises.md), when everything holds.
    """
    folder = impl_folder(impl)
    names = exercises_of(method)
    key = (folder, method, _digest(folder, names))
    if key not in _PASSED:
        _PASSED[key] = _run_grader(impl, folder, method, names, time_limit)
    return _PASSED[key]


def _run_grader(impl, folder, method, names, time_limit):
    with tempfile.TemporaryDirectory(prefix="minigpt-grade-") as tmp:
        report_path = pathlib.Path(tmp) / "grades.json"
        cmd = [sys.executable, "-m", "pytest", str(GRADER), f"--impl={folder}", "-k", " or ".join(names),
               f"--report={report_path}", f"--time-limit={time_limit:g}", "-q", "-p", "no:cacheprovider"]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if not report_path.is_file():  # the grader itself could not run: show its last line
            tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
            raise ValueError(f"impl={impl!r}: the grader could not run ({' '.join(cmd[2:])}): {tail[0]}")
        report = json.loads(report_path.read_text(encoding="utf-8"))
    missing = [n for n in names if n not in report["exercises"]]
    if missing:
        raise ValueError(f"impl={impl!r}: the grader graded no property of {missing}")
    if first_problem(report, method) is not None:
        raise ValueError(problem_line(impl, method, report))
    return report


# --- loading ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pieces:
    """The exercise functions a run trains with (see the module docstring); any subset may be None."""
    folder: pathlib.Path
    lora_forward: object = None
    delta_weight: object = None
    merge: object = None
    unmerge: object = None
    inject_lora: object = None
    lora_linear: object = None
    quantize_blockwise: object = None
    dequantize_blockwise: object = None
    LinearNF4: object = None


def load_pieces(impl, method):
    """The Pieces of `impl`'s folder that a `method` run needs, each file imported by path.

    The files are graded first (grade: at once if these contents passed already), so code the grader
    has not passed never builds a model. Raises ValueError as grade does.
    """
    grade(impl, method)
    folder = impl_folder(impl)
    found = {}
    for exercise in exercises_of(method):
        path = folder / f"{exercise}.py"
        spec = importlib.util.spec_from_file_location(f"minigpt_impl_{exercise}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        found |= {name: getattr(module, name) for name in PIECES[exercise]}
    return Pieces(folder, **found)


# --- the student's LoRA layer and model --------------------------------------------------------------


class ExerciseLoRALinear(LoRALinear):
    """A LoRALinear (one adapter, "default") whose arithmetic is the exercises' functions.

    With gradients on (training) the output is pieces.lora_linear(x, W, b, A, B, α/r), so its
    hand-written backward gives ∂L/∂x, ∂L/∂A, ∂L/∂B; without (evaluation, sampling) it is
    pieces.lora_forward(x, W, b, A, B, α, r). delta_weight, merged_weight and unmerged_weight call
    pieces.delta_weight, merge and unmerge. A quantized base (QLoRA) gives W as its dequantised
    weight: the student's LoRAFunction then keeps that float W for backward, the arithmetic of QLoRA
    without its memory saving.

    The functions run in x's dtype with autocast off: a hand-written backward sees the dtypes its
    forward saw.
    """

    def __init__(self, base, rank, alpha, pieces):
        super().__init__(base, rank=rank, alpha=alpha)
        self.pieces = pieces

    def forward(self, x):
        """(..., d_in) -> (..., d_out)."""
        if self.merged or self.disabled:
            return self.base(x)
        W, b = self.base_weight(), self.base.bias
        W, b, A, B = (None if t is None else t.to(x.dtype) for t in (W, b, self.lora_A, self.lora_B))
        with torch.autocast(x.device.type, enabled=False):
            if torch.is_grad_enabled():
                return self.pieces.lora_linear(x, W, b, A, B, self.scaling)
            return self.pieces.lora_forward(x, W, b, A, B, self.alpha, self.rank)

    def delta_weight(self, names=None):
        return self.pieces.delta_weight(self.lora_A, self.lora_B, self.alpha, self.rank)

    def merged_weight(self, names=None):
        W = self.base_weight().detach()
        return self.pieces.merge(W, self.lora_A.detach().to(W.dtype), self.lora_B.detach().to(W.dtype),
                                 self.alpha, self.rank)

    def unmerged_weight(self):
        W = self.base.weight.detach()
        return self.pieces.unmerge(W, self.lora_A.detach().to(W.dtype), self.lora_B.detach().to(W.dtype),
                                   self.alpha, self.rank)


def exercise_model(base, cfg, pieces):
    """`base` with LoRA put in by pieces.inject_lora (and for qlora each base quantised by pieces.LinearNF4).

    The layers are exactly those the library's apply_lora would adapt (lora.inject.plan_lora), given
    to inject_lora by their full names; A is drawn after torch.manual_seed(cfg.seed), layer by layer
    in model order, as apply_lora draws it.
    Returns:
        (model, {"quantized_bytes_before", "quantized_bytes_after"}; None unless qlora).
    Raises:
        ValueError: inject_lora left the model other than the grader's properties promise.
    """
    names = [name for name, *_ in plan_lora(base, cfg.lora)]
    before = model_weight_bytes(base)

    def make_layer(linear):
        if cfg.method == "qlora":
            linear = pieces.LinearNF4(linear, pieces.quantize_blockwise, pieces.dequantize_blockwise, NF4_BLOCKSIZE)
        return ExerciseLoRALinear(linear, cfg.rank, cfg.alpha, pieces)

    torch.manual_seed(cfg.seed)  # A's Kaiming init
    replaced = pieces.inject_lora(base, names, make_layer)
    layers = [(n, base.get_submodule(n)) for n in names]
    if sorted(replaced) != sorted(names) or not all(isinstance(m, ExerciseLoRALinear) for _, m in layers):
        raise ValueError(f"inject_lora replaced {sorted(replaced)[:4]}...; the run asked for {len(names)} layers")
    for _, layer in layers:
        layer.base.requires_grad_(False)  # a quantized base's bias is a new Parameter: frozen, as QLoRA keeps it
    base.lora_configs = {"default": cfg.lora}  # what apply_lora records: save_adapter writes it
    info = {"quantized_bytes_before": None, "quantized_bytes_after": None}
    if cfg.method == "qlora":  # the base's bytes, as quantize_model counts them: without the adapters
        adapters = sum(t.numel() * t.element_size() for _, m in layers for t in (m.lora_A, m.lora_B))
        info = {"quantized_bytes_before": before, "quantized_bytes_after": model_weight_bytes(base) - adapters}
    return base, info
