"""Fine-tune a base model on tiny Shakespeare with full fine-tuning, LoRA or QLoRA, and report what it cost.

    python -m minigpt.finetune                          # LoRA r=8 on the offline tiny base, minutes on a CPU
    python -m minigpt.finetune --method qlora           # the same on an NF4-quantised base
    python -m minigpt.finetune --method full            # every weight trained, for comparison
    python -m minigpt.finetune --base gpt2 --block-size 64 --steps 200
    python -m minigpt.finetune --compare                # full vs LoRA ranks vs QLoRA vs scratch

One run writes into --out: config.json, metrics.jsonl, ckpt.pt (for --resume), adapter/ (PEFT's
layout; none for full fine-tuning), merged/ (GPT-2 layout, loads with GPT.from_pretrained),
loss_curve.png and report.json. Every file is written atomically, report.json last.

Shape legend: B batch size, T block size, V vocabulary size.
"""

import argparse
import copy
import dataclasses
import json
import math
import os
import pathlib
import shutil
import sys
import tempfile
import time

import torch

from lora import apply_lora, atomic_write, count_parameters, merge_and_unload, save_adapter, trainable_summary
from lora.inject import plan_lora
from minigpt.base_model import SCRATCH, TINY, BaseRecipe, base_config, base_tokenizer, corpus_text, load_base
from minigpt.checkpoint import checkpoint_path, read_checkpoint
from minigpt.data import encode_text, load_tiny_shakespeare, split_train_val
from minigpt.device import DEVICES, pick_device
from minigpt.model import GPT, PRESETS
from minigpt.pretrained import GPT2_NAMES, save_pretrained
from minigpt.train import TrainConfig, estimate_loss, train

METHODS = ("full", "lora", "qlora")
# peak learning rates, chosen by measurement on the tiny base (docs/results.md): LoRA's few parameters,
# with B starting at zero, need a larger step than full fine-tuning, which forgets faster at high lr
DEFAULT_LR = {"full": 3e-4, "lora": 2e-3, "qlora": 2e-3}
SCRATCH_LR = 1e-3  # nanoGPT's lr for its small character model trained from random weights
# fields that do not change a run's numbers: they may differ between a run and its resumption
FREE_FIELDS = ("out", "resume", "overwrite", "device", "compile", "progress", "cache_dir")
OUTPUTS = ("config.json", "metrics.jsonl", "ckpt.pt", "adapter", "merged", "loss_curve.png", "report.json")


@dataclasses.dataclass
class FinetuneConfig:
    method: str = "lora"          # full | lora | qlora
    base: str = TINY              # tiny | scratch | gpt2 | gpt2-medium | gpt2-large | gpt2-xl | a folder
    base_corpus: str | None = None  # text file the tiny base is pretrained on; None = the Python docs
    base_preset: str = "tiny"     # architecture of the tiny base (a GPTConfig preset; vocabulary 256)
    base_steps: int = 1500        # pretraining steps of the tiny base
    rank: int = 8                 # LoRA r
    alpha: float = 16.0           # LoRA alpha; the update is scaled by alpha / r
    dropout: float = 0.0          # LoRA dropout on the adapter's input
    targets: str = "all-linear"   # comma-separated module names, or every Linear of the blocks
    steps: int = 400              # optimizer steps of fine-tuning
    batch_size: int = 16          # sequences per step
    block_size: int | None = None  # tokens per sequence; None = min(128, the base's block size)
    lr: float | None = None       # peak learning rate; None = DEFAULT_LR[method] (SCRATCH_LR for scratch)
    device: str = "auto"          # auto | cpu | cuda | mps
    compile: bool = False         # torch.compile the model for training
    out: str | None = None        # output folder; None = runs/finetune-<method>
    resume: bool = False          # continue the interrupted run in --out
    overwrite: bool = False       # replace a run of another configuration in --out
    seed: int = 1337              # batches, LoRA init, sampling
    eval_interval: int = 50       # evaluate (and checkpoint) every this many steps
    eval_batches: int = 20        # validation batches per evaluation
    data: str | None = None       # tiny Shakespeare's input.txt; None = found by minigpt.data
    prompt: str = "ROMEO:"        # sample prompt, before and after fine-tuning
    sample_tokens: int = 200      # tokens sampled after the prompt
    cache_dir: str | None = None  # where the tiny base is cached; None = minigpt.download.cache_dir()
    progress: bool = True         # progress bars


def _positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name}={value!r}: must be a positive integer")


def _positive_float(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r}: must be a positive finite number")


def recipe_of(cfg):
    """The BaseRecipe of the tiny base `cfg` fine-tunes (its seed is the run's seed)."""
    return BaseRecipe(preset=cfg.base_preset, steps=cfg.base_steps, seed=cfg.seed, corpus=cfg.base_corpus)


def validate(cfg):
    """Check every field of `cfg` and fill in the defaults; touches no file.

    Returns:
        a new FinetuneConfig with lr, block_size and out filled in.
    Raises:
        ValueError: naming the bad value and what is allowed (see the checks below).
    """
    if cfg.method not in METHODS:
        raise ValueError(f"method={cfg.method!r}: choose one of {list(METHODS)}")
    if cfg.base == SCRATCH and cfg.method != "full":
        raise ValueError(f"base='scratch' trains every weight from random init; use method='full', not {cfg.method!r}")
    if cfg.base_preset not in PRESETS:
        raise ValueError(f"base_preset={cfg.base_preset!r}: choose one of {sorted(PRESETS)}")
    for name in ("base_steps", "rank", "steps", "batch_size", "eval_interval", "eval_batches", "sample_tokens"):
        _positive_int(name, getattr(cfg, name))
    _positive_float("alpha", cfg.alpha)
    if cfg.lr is not None:
        _positive_float("lr", cfg.lr)
    if cfg.device not in DEVICES:
        raise ValueError(f"device={cfg.device!r}: choose one of {list(DEVICES)}")
    if not cfg.prompt:
        raise ValueError("prompt='': give a non-empty prompt to sample from")
    config = base_config(cfg.base, recipe_of(cfg))  # unknown base -> ValueError
    if cfg.base_corpus is not None:
        if cfg.base != TINY:
            raise ValueError(f"base_corpus is for base='tiny'; base={cfg.base!r} is already pretrained")
        try:
            corpus_text(recipe_of(cfg))  # empty or not text -> ValueError
        except FileNotFoundError:
            raise ValueError(f"base_corpus={cfg.base_corpus!r}: no such file; give a UTF-8 text file") from None
    block = cfg.block_size if cfg.block_size is not None else min(128, config.block_size)
    _positive_int("block_size", block)
    if block > config.block_size:
        raise ValueError(f"block_size={block}: the base's position table holds at most {config.block_size}")
    if cfg.method != "full":
        with torch.device("meta"):  # the architecture only: no memory, no time
            skeleton = GPT(config)
        plan_lora(skeleton, cfg.rank, cfg.alpha, cfg.dropout, _targets(cfg.targets))  # rank > width, bad targets
    lr = cfg.lr if cfg.lr is not None else (SCRATCH_LR if cfg.base == SCRATCH else DEFAULT_LR[cfg.method])
    out = cfg.out if cfg.out is not None else os.path.join("runs", f"finetune-{cfg.method}")
    cfg = dataclasses.replace(cfg, lr=float(lr), block_size=block, out=str(out), alpha=float(cfg.alpha))
    pick_device(cfg.device)  # cuda/mps asked for but absent -> ValueError
    check_out_dir(cfg)
    return cfg


def _targets(targets):
    return "all-linear" if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]


def _result_fields(cfg):
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in FREE_FIELDS}


def check_out_dir(cfg):
    """Refuse an --out that holds something other than this run (unless cfg.overwrite)."""
    out = pathlib.Path(cfg.out)
    if cfg.resume and cfg.overwrite:
        raise ValueError("resume=True and overwrite=True contradict each other; choose one")
    if not out.exists() or cfg.overwrite:
        return
    if not out.is_dir():
        raise ValueError(f"out={cfg.out!r} is a file; give a folder")
    saved_path = out / "config.json"
    if not saved_path.is_file():
        if any(out.iterdir()):
            raise ValueError(f"out={cfg.out!r} holds files that are not a fine-tuning run; "
                             "choose an empty or new folder, or pass --overwrite")
        return
    try:
        saved = json.loads(saved_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        saved = {}
    mine = _result_fields(cfg)
    diff = [f"{k}={saved.get(k, '<absent>')!r} (here {v!r})" for k, v in mine.items() if saved.get(k, "<absent>") != v]
    if diff:
        raise ValueError(f"out={cfg.out!r} holds a run of another configuration: {', '.join(diff)}; "
                         "choose another --out, or pass --overwrite to replace it")


def prepare_model(base, cfg):
    """Turn the base into the model to train: all weights (full), LoRA (lora) or NF4 + LoRA (qlora).

    Returns:
        (model, {"quantized_bytes_before", "quantized_bytes_after"}; None unless qlora).
    """
    info = {"quantized_bytes_before": None, "quantized_bytes_after": None}
    if cfg.method == "full":
        base.requires_grad_(True)
        return base, info
    if cfg.method == "qlora":
        from lora.nf4_linear import quantize_model  # the frozen base becomes 4-bit NormalFloat (QLoRA §3)
        info["quantized_bytes_before"], info["quantized_bytes_after"] = quantize_model(base, _targets(cfg.targets))
    torch.manual_seed(cfg.seed)  # A's Kaiming init
    return apply_lora(base, cfg.rank, cfg.alpha, cfg.dropout, _targets(cfg.targets)), info


def load_data(cfg, tokenizer):
    """Tiny Shakespeare split 90/10 as text, then encoded: (train ids (N,), val ids (M,))."""
    train_text, val_text = split_train_val(load_tiny_shakespeare(cfg.data))
    return encode_text(tokenizer, train_text), encode_text(tokenizer, val_text)


def train_config(cfg):
    """The TrainConfig of a fine-tuning run: warm-up over 5% of the steps, cosine to lr / 10."""
    return TrainConfig(
        max_iters=cfg.steps, batch_size=cfg.batch_size, block_size=cfg.block_size, lr=cfg.lr, min_lr=cfg.lr / 10,
        warmup_iters=cfg.steps // 20, eval_interval=cfg.eval_interval, eval_iters=cfg.eval_batches, seed=cfg.seed,
        # no weight decay on adapters: it would pull B A towards zero, i.e. back to the base (QLoRA used 0 too)
        weight_decay=0.1 if cfg.method == "full" else 0.0,
        device=cfg.device, compile=cfg.compile, progress=cfg.progress, out_dir=cfg.out,
        checkpoint_interval=cfg.eval_interval, trainable_only=cfg.method != "full", resume=cfg.resume,
        metrics_path=os.path.join(cfg.out, "metrics.jsonl"))


@torch.no_grad()
def sample(model, tokenizer, cfg, device):
    """`cfg.sample_tokens` tokens after cfg.prompt, drawn with a generator seeded by cfg.seed."""
    idx = torch.tensor([tokenizer.encode(cfg.prompt)], dtype=torch.long, device=device)  # (1, P)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    out = model.generate(idx, cfg.sample_tokens, temperature=0.8, top_k=None, generator=generator)
    return tokenizer.decode(out[0, idx.size(1):].tolist())


def fixed_batch(val_ids, cfg, n=4):
    """The first n consecutive windows of the validation text: (n, T), the same in every run."""
    n = max(1, min(n, (len(val_ids) - 1) // cfg.block_size))
    return val_ids[: n * cfg.block_size].view(n, cfg.block_size)


@torch.no_grad()
def merged_model(model, cfg, batch):
    """(plain GPT holding W + ΔW, max |logits(merged) - logits(unmerged)| on `batch`); full: (model, None)."""
    if cfg.method == "full":
        return model, None
    model.eval()
    merged = merge_and_unload(copy.deepcopy(model))
    diff = (merged(batch)[0] - model(batch)[0]).abs().max().item()  # float32, no autocast
    return merged, diff


def _clear_outputs(out):
    for name in OUTPUTS:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def _trim_metrics(out):
    """On resume: keep the metric lines up to the checkpoint's step, so none is written twice."""
    metrics = out / "metrics.jsonl"
    if not metrics.is_file():
        return 0
    step = read_checkpoint(out)["step"] if os.path.isfile(checkpoint_path(out)) else 0
    lines = [ln for ln in metrics.read_text(encoding="utf-8").splitlines() if ln.strip()]
    kept = [ln for ln in lines if json.loads(ln)["step"] <= step]
    with atomic_write(metrics, "w") as f:
        f.write("".join(ln + "\n" for ln in kept))
    return step


def _publish_dir(out, name, write):
    """write(tmp_folder) into a temporary folder, then swap it in as out/name."""
    tmp = pathlib.Path(tempfile.mkdtemp(dir=out, prefix=f".{name}."))
    old = out / f".{name}.old"
    try:
        write(tmp)
        shutil.rmtree(old, ignore_errors=True)
        if (out / name).exists():
            os.rename(out / name, old)
        os.rename(tmp, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _dir_bytes(path):
    return sum(p.stat().st_size for p in pathlib.Path(path).rglob("*") if p.is_file())


def save_loss_curve(result, path, title):
    """Training loss per step and validation loss per evaluation, as a PNG (matplotlib's Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(range(1, len(result.train_losses) + 1), result.train_losses, lw=0.8, alpha=0.6, label="train")
    if result.val_losses:
        steps, losses = zip(*result.val_losses, strict=True)
        ax.plot(steps, losses, "o-", ms=3, label="val")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
