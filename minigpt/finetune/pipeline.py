"""The fine-tuning pipeline: base -> (full | LoRA | QLoRA) model -> training -> the run's files and report.

One run writes into cfg.out: config.json, metrics.jsonl, ckpt.pt (for --resume), adapter/ (PEFT's
layout; none for full fine-tuning), merged/ (GPT-2 layout, loads with minigpt.load_pretrained),
loss_curve.png, model.json (the tokenizer and base that rebuild the model: minigpt.sources) and
report.json. Every file is written atomically, report.json last.

Shape legend: B batch size, T block size, V vocabulary size.
"""

import copy
import dataclasses
import os
import pathlib
import time

import torch

from lora import apply_lora, count_parameters, merge_and_unload, save_adapter, trainable_summary
from lora.io.files import atomic_dir, dir_bytes, write_json
from lora.quant.nf4_linear import quantize_model
from minigpt.data import encode_text, load_tiny_shakespeare, split_train_val
from minigpt.device import pick_device
from minigpt.finetune.base_model import base_tokenizer, load_base
from minigpt.finetune.config import method_label, recipe_of, validate
from minigpt.finetune.impl import exercise_model, grade, load_pieces
from minigpt.finetune.report import FinetuneReport
from minigpt.finetune.rundir import clear_outputs, save_loss_curve, trim_metrics
from minigpt.pretrained import save_pretrained
from minigpt.sources import RUN_FILE, run_description
from minigpt.trainer import TrainConfig, estimate_loss, train


def prepare_model(base, cfg):
    """Turn the base into the model to train: all weights (full), LoRA (lora) or NF4 + LoRA (qlora).

    With cfg.impl the LoRA layers, their injection and the NF4 base are the exercises' code
    (minigpt.finetune.impl; grade it first).
    Returns:
        (model, {"quantized_bytes_before", "quantized_bytes_after"}; None unless qlora).
    """
    info = {"quantized_bytes_before": None, "quantized_bytes_after": None}
    if cfg.method == "full":
        base.requires_grad_(True)
        return base, info
    if cfg.impl is not None:
        return exercise_model(base, cfg, load_pieces(cfg.impl, cfg.method))
    if cfg.method == "qlora":  # the frozen base becomes 4-bit NormalFloat (QLoRA §3)
        info["quantized_bytes_before"], info["quantized_bytes_after"] = quantize_model(base, cfg.lora.target_modules)
    torch.manual_seed(cfg.seed)  # A's Kaiming init
    return apply_lora(base, cfg.lora), info


def load_data(cfg, tokenizer):
    """Tiny Shakespeare split 90/10 as text, then encoded: (train ids (N,), val ids (M,))."""
    train_text, val_text = split_train_val(load_tiny_shakespeare(cfg.data))
    return encode_text(tokenizer, train_text), encode_text(tokenizer, val_text)


def train_config(cfg):
    """The TrainConfig of a fine-tuning run: warm-up over 5% of the steps, cosine to lr / 10."""
    return TrainConfig(
        steps=cfg.steps, batch_size=cfg.batch_size, block_size=cfg.block_size, lr=cfg.lr, min_lr=cfg.lr / 10,
        warmup_steps=cfg.steps // 20, eval_interval=cfg.eval_interval, eval_batches=cfg.eval_batches, seed=cfg.seed,
        # no weight decay on adapters: it would pull B A towards zero, i.e. back to the base model
        weight_decay=0.1 if cfg.method == "full" else 0.0,
        device=cfg.device, compile=cfg.compile, progress=cfg.progress, progress_desc=f"fine-tuning ({method_label(cfg)})",
        out=cfg.out,
        checkpoint_interval=cfg.eval_interval, trainable_only=cfg.method != "full", resume=cfg.resume,
        metrics_path=os.path.join(cfg.out, "metrics.jsonl"), threads=cfg.threads)


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
        with atomic_dir(out / "adapter") as d:
            save_adapter(model, d, base_model_name_or_path=base_path)
    with atomic_dir(out / "merged") as d:
        save_pretrained(merged, d)  # tensors are copied to the CPU there
    save_loss_curve(result.train_losses, result.val_losses, out / "loss_curve.png", _curve_title(cfg))
    return (dir_bytes(out / "adapter") if cfg.method != "full" else None), dir_bytes(out / "merged")


def _curve_title(cfg):
    method = "full fine-tuning" if cfg.method == "full" else f"{cfg.method.upper()} r={cfg.rank}, alpha={cfg.alpha:g}"
    return f"{method} on the {cfg.base} base: {cfg.steps} steps, lr {cfg.lr:g}"


def run_finetune(cfg, callback=None):
    """Fine-tune `cfg.base` on tiny Shakespeare by `cfg.method` and write the run into cfg.out.

    Args:
        cfg: FinetuneConfig (validated here first; nothing is written when it is invalid).
        callback: passed to minigpt.trainer.train: callback(step, metrics) after every step.
    Returns:
        the FinetuneReport that is also written to report.json.
    Raises:
        ValueError: a bad configuration (see validate), or with cfg.impl exercise code that the grader
            does not pass (minigpt.finetune.impl.grade), before any file is written.
    """
    t0 = time.perf_counter()
    cfg = validate(cfg)
    if cfg.impl is not None:
        grade(cfg.impl, cfg.method)
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
    report = FinetuneReport(
        method=cfg.method, base=cfg.base, base_path=base_info["path"], base_cached=base_info["cached"],
        base_pretrain_seconds=base_info.get("pretrain_seconds"), device=str(device),
        rank=None if cfg.method == "full" else cfg.rank, alpha=None if cfg.method == "full" else cfg.alpha,
        targets=None if cfg.method == "full" else cfg.targets, steps=cfg.steps, lr=cfg.lr,
        batch_size=cfg.batch_size, block_size=cfg.block_size, resumed_from_step=resumed_from,
        val_loss_base=val_loss_base if val_loss_base is not None else result.val_losses[0][1],
        val_loss_before=result.val_losses[0][1], val_loss_after=result.final_val_loss,
        val_curve=[list(v) for v in result.val_losses], train_loss_final=result.train_losses[-1],
        trainable_params=trainable, total_params=total, trainable_percent=100 * trainable / total,
        params_summary=trainable_summary(model),
        peak_memory_bytes=result.peak_memory_bytes, optimizer_state_bytes=result.optimizer_state_bytes,
        train_seconds=result.wall_time, tokens_per_sec=result.tokens_per_sec, tokens_seen=result.tokens_seen,
        adapter_bytes=adapter_bytes, merged_bytes=merged_bytes, **quant, merged_max_abs_logit_diff=diff,
        prompt=cfg.prompt, sample_before=sample_before, sample_after=sample(model, tokenizer, cfg, device),
        total_seconds=time.perf_counter() - t0,
    )
    write_json(out / RUN_FILE, run_description(tokenizer, base_info["path"], adapter=cfg.method != "full"))
    write_json(out / "report.json", report.to_dict())  # last: its presence means the run is complete
    return report


