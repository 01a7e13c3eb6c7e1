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
import math
import os
import pathlib
import sys
import time

import torch

from lora import apply_lora, count_parameters, merge_and_unload, save_adapter, trainable_summary
from lora.inject import plan_lora
from minigpt.base_model import SCRATCH, TINY, BaseRecipe, base_config, base_tokenizer, corpus_text, load_base
from minigpt.data import encode_text, load_tiny_shakespeare, split_train_val
from minigpt.device import DEVICES, pick_device
from minigpt.finetune_io import (
    check_out_dir,
    clear_outputs,
    dir_bytes,
    publish_dir,
    save_loss_curve,
    trim_metrics,
    write_json,
)
from minigpt.model import GPT, PRESETS
from minigpt.pretrained import save_pretrained
from minigpt.train import TrainConfig, estimate_loss, train

METHODS = ("full", "lora", "qlora")
# peak learning rates, the best of a sweep on the tiny base (docs/results.md): LoRA's update B A starts
# at zero and lives in a rank-r subspace, so it needs a larger step than full fine-tuning
DEFAULT_LR = {"full": 1e-3, "lora": 5e-3, "qlora": 5e-3}
SCRATCH_LR = 1e-3  # nanoGPT's lr for its small character model trained from random weights


@dataclasses.dataclass
class FinetuneConfig:
    method: str = "lora"          # full | lora | qlora
    base: str = TINY              # tiny | scratch | gpt2 | gpt2-medium | gpt2-large | gpt2-xl | a folder
    base_corpus: str | None = None  # text file the tiny base is pretrained on; None = the Python docs
    base_preset: str = "tiny"     # architecture of the tiny base (a GPTConfig preset; vocabulary 256)
    base_steps: int = 800         # pretraining steps of the tiny base
    rank: int = 8                 # LoRA r
    alpha: float = 16.0           # LoRA alpha; the update is scaled by alpha / r
    dropout: float = 0.0          # LoRA dropout on the adapter's input
    targets: str = "all-linear"   # comma-separated module names, or every Linear of the blocks
    steps: int = 300              # optimizer steps of fine-tuning
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
    cache_dir: str | None = None  # cache of tiny bases and GPT-2 downloads; None = minigpt.download.cache_dir()
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


def _check_values(cfg):
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


def _check_base(cfg):
    """The base's GPTConfig, after checking the base, its corpus, the block size, rank and targets against it."""
    config = base_config(cfg.base, recipe_of(cfg))  # unknown base -> ValueError
    if cfg.base_corpus is not None:
        if cfg.base != TINY:
            raise ValueError(f"base_corpus is for base='tiny'; base={cfg.base!r} is already pretrained")
        try:
            corpus_text(recipe_of(cfg))  # empty or not text -> ValueError
        except FileNotFoundError:
            raise ValueError(f"base_corpus={cfg.base_corpus!r}: no such file; give a UTF-8 text file") from None
    if cfg.block_size is not None:
        _positive_int("block_size", cfg.block_size)
        if cfg.block_size > config.block_size:
            raise ValueError(f"block_size={cfg.block_size}: the base's position table holds at most {config.block_size}")
    if cfg.method != "full":
        with torch.device("meta"):  # the architecture only: no memory, no time
            skeleton = GPT(config)
        plan_lora(skeleton, cfg.rank, cfg.alpha, cfg.dropout, _targets(cfg.targets))  # rank > width, bad targets
    return config


def validate(cfg):
    """Check every field of `cfg` and fill in the defaults; writes nothing.

    Returns:
        a new FinetuneConfig with lr, block_size and out filled in.
    Raises:
        ValueError: naming the bad value and what is allowed: unknown method or base, a rank above
            the smallest targeted layer's width, non-positive sizes, a corpus that is empty or not
            text, an --out holding a run of another configuration, an unavailable device.
    """
    _check_values(cfg)
    config = _check_base(cfg)
    lr = cfg.lr if cfg.lr is not None else (SCRATCH_LR if cfg.base == SCRATCH else DEFAULT_LR[cfg.method])
    cfg = dataclasses.replace(
        cfg, lr=float(lr), alpha=float(cfg.alpha), block_size=cfg.block_size or min(128, config.block_size),
        out=cfg.out if cfg.out is not None else os.path.join("runs", f"finetune-{cfg.method}"))
    pick_device(cfg.device)  # cuda or mps asked for but absent -> ValueError
    check_out_dir(cfg)
    return cfg


def _targets(targets):
    return "all-linear" if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]


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
        # no weight decay on adapters: it would pull B A towards zero, i.e. back to the base model
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


def write_artifacts(cfg, model, merged, result, base_path):
    """adapter/ (PEFT layout; not for full fine-tuning), merged/ (GPT-2 layout) and loss_curve.png in cfg.out.

    Returns:
        (adapter bytes on disk or None, merged model bytes on disk).
    """
    out = pathlib.Path(cfg.out)
    if cfg.method != "full":
        publish_dir(out, "adapter", lambda d: save_adapter(model, d, base_model_name_or_path=base_path))
    publish_dir(out, "merged", lambda d: save_pretrained(merged, d))  # tensors are copied to the CPU there
    save_loss_curve(result.train_losses, result.val_losses, out / "loss_curve.png", f"{cfg.method} on {cfg.base} base")
    return (dir_bytes(out / "adapter") if cfg.method != "full" else None), dir_bytes(out / "merged")


def run_finetune(cfg, callback=None):
    """Fine-tune `cfg.base` on tiny Shakespeare by `cfg.method` and write the run into cfg.out.

    Args:
        cfg: FinetuneConfig (validated here first; nothing is written when it is invalid).
        callback: passed to minigpt.train.train: callback(step, metrics) after every step.
    Returns:
        the report dict that is also written to report.json (keys: REPORT_KEYS).
    Raises:
        ValueError: a bad configuration (see validate), before any file is written.
    """
    t0 = time.perf_counter()
    cfg = validate(cfg)
    out = pathlib.Path(cfg.out)
    device = pick_device(cfg.device)
    tokenizer = base_tokenizer(cfg.base)
    train_ids, val_ids = load_data(cfg, tokenizer)
    base, base_info = load_base(cfg.base, recipe_of(cfg), cfg.device, cfg.cache_dir, cfg.progress)
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.resume:
        clear_outputs(out)
    resumed_from = trim_metrics(out)  # 0 when starting afresh
    write_json(out / "config.json", dataclasses.asdict(cfg))
    base.to(device)
    val_loss_base = estimate_loss(base, val_ids, train_config(cfg)) if cfg.method == "qlora" else None
    model, quant = prepare_model(base, cfg)
    trainable, total = count_parameters(model)
    sample_before = sample(model, tokenizer, cfg, device)
    result = train(model, train_ids, val_ids, train_config(cfg), callback=callback)
    batch = fixed_batch(val_ids, cfg).to(device)
    merged, diff = merged_model(model, cfg, batch)
    adapter_bytes, merged_bytes = write_artifacts(cfg, model, merged, result, base_info["path"])
    report = {
        "method": cfg.method, "base": cfg.base, "base_path": base_info["path"], "base_cached": base_info["cached"],
        "base_pretrain_seconds": base_info.get("pretrain_seconds"), "device": str(device),
        "rank": None if cfg.method == "full" else cfg.rank, "alpha": None if cfg.method == "full" else cfg.alpha,
        "targets": None if cfg.method == "full" else cfg.targets, "steps": cfg.steps, "lr": cfg.lr,
        "batch_size": cfg.batch_size, "block_size": cfg.block_size, "resumed_from_step": resumed_from,
        "val_loss_base": val_loss_base if val_loss_base is not None else result.val_losses[0][1],
        "val_loss_before": result.val_losses[0][1], "val_loss_after": result.final_val_loss,
        "val_curve": [list(v) for v in result.val_losses], "train_loss_final": result.train_losses[-1],
        "trainable_params": trainable, "total_params": total, "trainable_percent": 100 * trainable / total,
        "params_summary": trainable_summary(model),
        "peak_memory_bytes": result.peak_memory_bytes, "optimizer_state_bytes": result.optimizer_state_bytes,
        "train_seconds": result.wall_time, "tokens_per_sec": result.tokens_per_sec, "tokens_seen": result.tokens_seen,
        "adapter_bytes": adapter_bytes, "merged_bytes": merged_bytes, **quant, "merged_max_abs_logit_diff": diff,
        "prompt": cfg.prompt, "sample_before": sample_before, "sample_after": sample(model, tokenizer, cfg, device),
        "total_seconds": time.perf_counter() - t0,
    }
    write_json(out / "report.json", report)  # last: its presence means the run is complete
    return report


REPORT_KEYS = (
    "method", "base", "base_path", "base_cached", "base_pretrain_seconds", "device", "rank", "alpha", "targets",
    "steps", "lr", "batch_size", "block_size", "resumed_from_step", "val_loss_base", "val_loss_before",
    "val_loss_after", "val_curve", "train_loss_final", "trainable_params", "total_params", "trainable_percent",
    "params_summary", "peak_memory_bytes", "optimizer_state_bytes", "train_seconds", "tokens_per_sec",
    "tokens_seen", "adapter_bytes", "merged_bytes", "quantized_bytes_before", "quantized_bytes_after",
    "merged_max_abs_logit_diff", "prompt", "sample_before", "sample_after", "total_seconds",
)


# ---- command line ----

FLAGS = (  # (field, type, help); the defaults are FinetuneConfig's
    ("method", str, f"one of {list(METHODS)}"),
    ("base", str, "tiny, scratch, gpt2, gpt2-medium, gpt2-large, gpt2-xl, or a GPT-2 folder"),
    ("base_corpus", str, "text file to pretrain the tiny base on instead of the Python docs"),
    ("base_preset", str, "GPTConfig preset of the tiny base"), ("base_steps", int, "pretraining steps of the tiny base"),
    ("rank", int, "LoRA rank r"), ("alpha", float, "LoRA alpha (scaling alpha / r)"), ("dropout", float, "LoRA dropout"),
    ("targets", str, "comma-separated module names, or all-linear"), ("steps", int, "fine-tuning steps"),
    ("batch_size", int, "sequences per step"), ("block_size", int, "tokens per sequence (default min(128, base's))"),
    ("lr", float, f"peak learning rate (default {DEFAULT_LR}, {SCRATCH_LR} from scratch)"),
    ("device", str, f"one of {list(DEVICES)}"), ("out", str, "output folder (default runs/finetune-<method>)"),
    ("seed", int, "seed of batches, LoRA init and samples"), ("eval_interval", int, "steps between evaluations"),
    ("eval_batches", int, "validation batches per evaluation"), ("data", str, "tiny Shakespeare's input.txt"),
    ("prompt", str, "sample prompt"), ("sample_tokens", int, "tokens sampled after the prompt"),
    ("cache_dir", str, "cache of tiny bases and GPT-2 downloads (default $MINIGPT_CACHE_DIR or ~/.cache/minigpt)"),
)


def build_parser():
    p = argparse.ArgumentParser(prog="python -m minigpt.finetune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = FinetuneConfig()
    for name, kind, help in FLAGS:
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(d, name), help=help)
    p.add_argument("--compile", action="store_true", help="torch.compile the model for training")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a run of another configuration in --out")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--compare", action="store_true", help="full vs LoRA ranks 1-64 vs QLoRA vs scratch (runs/compare)")
    return p


def format_report(r):
    """The report as a few readable lines."""
    gib = lambda b: "n/a" if b is None else f"{b / 2**20:,.1f} MiB"
    lines = [
        f"{r['method']} on base {r['base']} ({'cached' if r['base_cached'] else 'built now'}: {r['base_path']})",
        r["params_summary"],
        f"val loss: base {r['val_loss_base']:.4f}, before {r['val_loss_before']:.4f}, after {r['val_loss_after']:.4f}",
        f"time: {r['train_seconds']:.1f} s training, {r['total_seconds']:.1f} s in all; {r['tokens_per_sec']:,.0f} tokens/s",
        f"memory: peak {gib(r['peak_memory_bytes'])}, optimizer state {gib(r['optimizer_state_bytes'])}; "
        f"adapter on disk {gib(r['adapter_bytes'])}",
    ]
    if r["merged_max_abs_logit_diff"] is not None:
        lines.append(f"merged vs unmerged logits: max abs difference {r['merged_max_abs_logit_diff']:.2e}")
    if r["quantized_bytes_before"] is not None:
        lines.append(f"NF4 base weights: {gib(r['quantized_bytes_before'])} -> {gib(r['quantized_bytes_after'])}")
    lines += [f"sample before: {r['prompt']}{r['sample_before']}", f"sample after:  {r['prompt']}{r['sample_after']}"]
    return "\n".join(lines)


def main(argv=None):
    args = vars(build_parser().parse_args(argv))
    try:
        if args.pop("compare"):
            from minigpt.compare import run_compare
            summary = run_compare(FinetuneConfig(**args))
            print(summary["table"])
            print(f"wrote {summary['markdown']} and {summary['plot']} in {summary['seconds']:.0f} s")
            return 0
        report = run_finetune(FinetuneConfig(**args))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    print(f"wrote {args['out'] or os.path.join('runs', 'finetune-' + report['method'])}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
