"""`--impl`: the fine-tune trained by the exercises' code (minigpt.finetune.impl), on a 2-layer 16-wide byte model.

The worked solutions must train to the library's numbers exactly; untouched skeletons and a wrong
solution must stop before anything is built, naming the function and the grader's hint.
"""

import dataclasses
import os
import pathlib
import shutil

import pytest
import torch

from helpers import write_fine_tune_texts
from lora import LoRALinear
from minigpt.finetune import FinetuneConfig, run_finetune
from minigpt.finetune.__main__ import main
from minigpt.finetune.base_model import load_base
from minigpt.finetune.config import recipe_of, validate
from minigpt.finetune.impl import FOLDERS, ExerciseLoRALinear, exercises_of, load_pieces
from minigpt.finetune.pipeline import prepare_model

SKELETONS = pathlib.Path(__file__).resolve().parents[2] / "notebooks" / "exercises"



@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("impl")
    write_fine_tune_texts(root)
    return root


def _cfg(files, name, **kw):
    fields = dict(base_corpus=str(files / "corpus.txt"), base_preset="test", base_steps=40, lr=1e-2,
                  data=str(files / "play.txt"), cache_dir=str(files / "cache"), out=str(files / name),
                  rank=4, steps=12, batch_size=4, block_size=16, eval_interval=6, eval_batches=2,
                  sample_tokens=8, prompt="THE ", device="cpu", progress=False)
    return FinetuneConfig(**{**fields, **kw})


def _argv(files, name, impl):
    cfg = _cfg(files, name)
    flags = ["base_corpus", "base_preset", "base_steps", "lr", "data", "cache_dir", "out", "rank", "steps",
             "batch_size", "block_size", "eval_interval", "eval_batches", "sample_tokens", "prompt", "device"]
    return [a for f in flags for a in (f"--{f.replace('_', '-')}", str(getattr(cfg, f)))] + ["--impl", impl, "--no-progress"]


def _folder(tmp_path, source, *, plant=None):
    """A copy of the exercise files a LoRA run needs from `source`; plant=(file, old, new) edits one."""
    for name in exercises_of("lora"):
        shutil.copy(source / f"{name}.py", tmp_path / f"{name}.py")
    if plant:
        file, old, new = plant
        text = (tmp_path / file).read_text(encoding="utf-8")
        assert old in text, f"{old!r} is not in {file}: the planted bug would not be planted"
        (tmp_path / file).write_text(text.replace(old, new), encoding="utf-8")
    return tmp_path


def test_solutions_train_to_the_library_loss_to_every_printed_digit(files):
    library = run_finetune(_cfg(files, "library"))
    solutions = run_finetune(_cfg(files, "solutions", impl="solutions"))
    # the same arithmetic in another order: the library folds B A into W0 where the shapes make it pay
    # (lora.backward), the solutions add the low-rank path, so the last float32 bits may differ. The
    # printed 4 decimals may not: every point of the curve within 5e-5, the half unit of the last one.
    steps = [s for s, _ in library.val_curve]
    assert [s for s, _ in solutions.val_curve] == steps and len(steps) == 3
    gaps = [abs(a - b) for (_, a), (_, b) in zip(solutions.val_curve, library.val_curve, strict=True)]
    assert max(gaps) < 5e-5, (solutions.val_curve, library.val_curve)
    assert solutions.val_curve[0] == library.val_curve[0]  # B = 0: both evaluate the base model itself
    assert solutions.train_loss_final == pytest.approx(library.train_loss_final, abs=5e-5)
    assert solutions.val_loss_after < solutions.val_loss_before  # it trained: the equality is not of two no-ops
    assert (solutions.trainable_params, solutions.total_params) == (library.trainable_params, library.total_params)
    assert solutions.sample_after == library.sample_after
    assert solutions.merged_max_abs_logit_diff < 1e-4


def test_the_model_is_built_from_the_exercise_layers(files):
    cfg = validate(_cfg(files, "layers", impl="solutions"))
    base, _ = load_base(cfg.base, recipe_of(cfg), "cpu", cfg.cache_dir, False)
    model, _ = prepare_model(base, cfg)
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert layers and all(isinstance(m, ExerciseLoRALinear) for m in layers)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {n for n, _ in model.named_parameters() if n.endswith(("lora_A", "lora_B"))}
    x = torch.randn(3, layers[0].in_features, requires_grad=True)
    assert type(layers[0](x).grad_fn).__name__ == "LoRAFunctionBackward"  # training goes through lora_linear
    idx = torch.randint(0, model.config.vocab_size, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as on CUDA: the hand-written backward sees one dtype
        model(idx, idx)[1].backward()
    assert all(m.lora_B.grad is not None and torch.isfinite(m.lora_B.grad).all() for m in layers)


def test_qlora_trains_on_the_exercise_nf4_base(files):
    cfg = _cfg(files, "qlora", method="qlora", impl="solutions")
    report = run_finetune(cfg)
    assert report.val_loss_after < report.val_loss_before
    base, _ = load_base(cfg.base, recipe_of(validate(cfg)), "cpu", cfg.cache_dir, False)
    sizes = [m.weight.numel() for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    # each float32 weight of n values becomes n/2 bytes of codes and a float32 absmax per 64 values
    assert report.quantized_bytes_before - report.quantized_bytes_after == sum(4 * n - n // 2 - 4 * (n // 64) for n in sizes)
    pieces = load_pieces("solutions", "qlora")
    assert pieces.LinearNF4.__module__ == "minigpt_impl_quantized_linear"


def test_untouched_skeletons_stop_before_training_naming_the_function(files, tmp_path, capsys):
    folder = _folder(tmp_path, SKELETONS)
    with pytest.raises(SystemExit) as e:
        main(_argv(files, "skeletons", str(folder)))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and "delta_weight() not implemented yet" in err, err
    assert f'pytest tests/test_exercises.py --impl={folder} -k "lora_layer or inject or lora_backward"' in err
    assert not (files / "skeletons").exists(), "nothing may be written before the code is graded"


def test_a_wrong_solution_stops_with_the_graders_hint(files, tmp_path, capsys):
    folder = _folder(tmp_path, FOLDERS["solutions"],
                     plant=("lora_layer.py", "(alpha / r) * ((x @ A.T) @ B.T)", "((x @ A.T) @ B.T)"))
    with pytest.raises(SystemExit) as e:
        main(_argv(files, "wrong", str(folder)))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert "lora_layer.py: lora_forward() fails 'forward adds the scaled low rank path'" in err, err
    assert "did you scale the low-rank path by α/r?" in err, err
    assert not (files / "wrong").exists()


def test_a_missing_exercise_file_says_how_to_start_it(files, tmp_path):
    folder = _folder(tmp_path, FOLDERS["solutions"])
    (folder / "inject.py").unlink()
    with pytest.raises(ValueError, match=r"inject\.py is not done yet: no .*inject\.py yet; start from the skeleton"):
        run_finetune(_cfg(files, "missing", impl=str(folder)))


@pytest.mark.parametrize("change, match", [
    (dict(method="full"), "method='full' trains every weight"),
    (dict(dora=True), "leave dora at the default"),
    (dict(dropout=0.1), "leave dropout at the default"),
    (dict(impl="no/such/folder"), "is not a folder"),
])
def test_settings_the_exercises_cannot_run_are_refused(files, change, match):
    cfg = dataclasses.replace(_cfg(files, "refused", impl="solutions"), **change)
    with pytest.raises(ValueError, match=match):
        run_finetune(cfg)
    assert not (files / "refused").exists()


def test_an_impl_run_has_its_own_default_folder_beside_the_librarys_run():
    # `python -m minigpt.finetune` then `--impl mine`, as the course prints them, must not meet one folder
    from minigpt.finetune import FinetuneConfig
    from minigpt.finetune.config import default_out
    assert default_out(FinetuneConfig()) == os.path.join("runs", "finetune-lora")
    assert default_out(FinetuneConfig(impl="mine")) == os.path.join("runs", "finetune-lora-impl-mine")
    assert default_out(FinetuneConfig(impl="submissions/ada/", method="qlora")) == os.path.join(
        "runs", "finetune-qlora-impl-ada")
