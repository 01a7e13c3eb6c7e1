"""`python -m minigpt.finetune`: fine-tune a base on tiny Shakespeare with full fine-tuning, LoRA or QLoRA.

    python -m minigpt.finetune                          # LoRA r=8 on the offline tiny base, minutes on a CPU
    python -m minigpt.finetune --method qlora           # the same on an NF4-quantised base
    python -m minigpt.finetune --method full            # every weight trained, for comparison
    python -m minigpt.finetune --dora --init pissa      # DoRA with PiSSA's SVD initialisation
    python -m minigpt.finetune --base gpt2 --block-size 64 --steps 200
    python -m minigpt.finetune --compare                # full vs LoRA ranks vs QLoRA, DoRA, PiSSA vs scratch
    python -m minigpt.finetune --impl mine              # trained by your exercise code (docs/exercises.md)
"""

import argparse
import os
import sys

from minigpt.cli import one_line_errors
from minigpt.device import DEVICES
from minigpt.finetune.compare import compare_configs, run_compare
from minigpt.finetune.config import DEFAULT_LR, METHODS, SCRATCH_LR, FinetuneConfig, validate
from minigpt.finetune.estimate import describe_compare, describe_run, estimate, estimate_compare
from minigpt.finetune.impl import grade
from minigpt.finetune.pipeline import run_finetune
from minigpt.finetune.report import format_report

FLAGS = (  # (field, type, help); "(default: ...)" is added from FinetuneConfig unless the help gives it
    ("method", str, "full (every weight), lora, or qlora (LoRA on an NF4 base)"),
    ("base", str, "tiny, scratch, gpt2, gpt2-medium, gpt2-large, gpt2-xl, or a GPT-2 folder"),
    ("base_corpus", str, "text file to pretrain the tiny base on (default: the Python docs)"),
    ("base_preset", str, "GPTConfig preset of the tiny base"), ("base_steps", int, "pretraining steps of the tiny base"),
    ("rank", int, "LoRA rank r"), ("alpha", float, "LoRA alpha (scaling alpha / r)"), ("dropout", float, "LoRA dropout"),
    ("targets", str, "comma-separated module names, or all-linear"), ("steps", int, "fine-tuning steps"),
    ("init", str, "how LoRA's A and B start: default (A Kaiming-uniform, B zero), gaussian, or pissa (lora only)"),
    ("batch_size", int, "sequences per step"), ("block_size", int, "tokens per sequence (default: min(128, the base's))"),
    ("lr", float, f"peak learning rate (default: {DEFAULT_LR[METHODS[0]]:g} full, {DEFAULT_LR['lora']:g} LoRA and "
                  f"QLoRA, {SCRATCH_LR:g} from scratch)"),
    ("device", str, f"where to train: {', '.join(DEVICES)}"), ("out", str, "output folder (default: runs/finetune-<method>)"),
    ("seed", int, "seed of batches, LoRA init and samples"), ("eval_interval", int, "steps between evaluations"),
    ("eval_batches", int, "validation batches per evaluation"),
    ("data", str, "a text file to fine-tune on (default: tiny Shakespeare from $MINIGPT_DATA_DIR, the cache, "
                  "or a download)"),
    ("prompt", str, "sample prompt"), ("sample_tokens", int, "tokens sampled after the prompt"),
    ("cache_dir", str, "cache of tiny bases and GPT-2 downloads (default: $MINIGPT_CACHE_DIR or ~/.cache/minigpt)"),
    ("threads", int, "torch threads while training, at most the usable cores (default: $OMP_NUM_THREADS, else one "
                     "per core free at the start)"),
    ("impl", str, "train with the graded exercises' code, checked by their grader first: solutions, mine "
                  "(notebooks/exercises/mine/) or a folder (default: the library; docs/exercises.md)"),
)


METAVARS = {str: "NAME", int: "N", float: "X"}
PATHS = {"base_corpus": "FILE", "data": "FILE", "out": "DIR", "cache_dir": "DIR", "prompt": "TEXT", "impl": "IMPL"}


def build_parser():
    p = argparse.ArgumentParser(prog="python -m minigpt.finetune",
                                description="Fine-tune a base on tiny Shakespeare with full fine-tuning, LoRA or QLoRA.")
    d = FinetuneConfig()
    for name, kind, help in FLAGS:
        default = getattr(d, name)
        shown = help if default is None or "(default:" in help else f"{help} (default: {default})"
        metavar = PATHS.get(name, METAVARS[kind])  # choices are checked by validate: a one-line error naming them
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=default, help=shown, metavar=metavar)
    p.add_argument("--dora", action="store_true", help="DoRA: also train a magnitude per output row (off by default)")
    p.add_argument("--use-rslora", action="store_true", help="scale LoRA by alpha / sqrt(r), rsLoRA (off by default)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model for training")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a run of another configuration in --out")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bars (shown by default)")
    p.add_argument("--compare", action="store_true", help="full vs LoRA ranks 1-64 vs QLoRA vs DoRA vs PiSSA vs scratch (runs/compare)")
    return p


INTERRUPTED = ("interrupted: every file in the run folder is whole (each is written beside its old version, then "
               "renamed); report.json, written last, is there only when the run finished. Continue with --resume")


def main(argv=None):
    args = vars(build_parser().parse_args(argv))
    compare = args.pop("compare")
    with one_line_errors(INTERRUPTED):
        cfg = FinetuneConfig(**args)
        if compare and cfg.impl is not None:
            raise ValueError("--compare runs the library's methods (full, DoRA, PiSSA, ...); drop --impl, or run "
                             "one method with it")
        if cfg.impl is not None:  # before the estimate, which times a few steps of the model the code builds
            grade(validate(cfg).impl, cfg.method)
        if compare:
            print(describe_compare(cfg, estimate_compare(compare_configs(cfg))), flush=True)
            summary = run_compare(cfg)
            print(summary["table"])
            print(f"wrote {summary['markdown']} and {summary['plot']} in {summary['seconds']:.0f} s")
            return 0
        print(describe_run(cfg, estimate(cfg)), flush=True)
        report = run_finetune(cfg)
    print(format_report(report))
    print(f"wrote {cfg.out or os.path.join('runs', 'finetune-' + report.method)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
