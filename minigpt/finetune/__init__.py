"""The main job: fine-tune a base on tiny Shakespeare by full fine-tuning, LoRA or QLoRA (`python -m minigpt.finetune`).

    config.py      FinetuneConfig and validate(): every setting checked before work starts
    base_model.py  the base: GPT-2, a GPT-2 folder, or a tiny byte-level GPT pretrained once and cached
    corpus.py      the offline English corpus the tiny base learns from (Python's own docs)
    pipeline.py    run_finetune(): base -> model -> training -> adapter, merged model, report
    estimate.py    the header printed before work: what runs, where, and the expected time
    report.py      FinetuneReport: what a run measured, as report.json and printed
    rundir.py      the run's output folder: refusing another run's folder, resuming, the loss curve
    compare.py     --compare: full vs LoRA ranks vs QLoRA vs training from scratch
    impl.py        --impl: the graded exercises' code builds and trains the model, graded first
"""

from minigpt.finetune.config import DEFAULT_LR, METHODS, FinetuneConfig, recipe_of, validate
from minigpt.finetune.pipeline import (
    fixed_batch,
    load_data,
    merged_model,
    prepare_model,
    run_finetune,
    sample,
    train_config,
)
from minigpt.finetune.report import FinetuneReport, format_report

__all__ = ["DEFAULT_LR", "METHODS", "FinetuneConfig", "recipe_of", "validate", "fixed_batch", "load_data",
           "merged_model", "prepare_model", "run_finetune", "sample", "train_config", "FinetuneReport",
           "format_report"]
