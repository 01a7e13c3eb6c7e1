"""Benchmark sections 2 and 3: what an adapter costs at inference, and one LoRA layer against nn.Linear.

Section 2 runs the same GPT four ways: the plain base model, LoRA unmerged (the side path B A x runs
on every call), LoRA merged (ΔW folded into W, the LoRALinear wrappers kept) and merged-and-unloaded
(plain nn.Linear layers again). LoRA §4.1 claims "no additional inference latency" once merged.
Section 3 times a single layer, so the per-call overhead of the side path is seen without the rest of
the model around it. Variants are timed round-robin (minigpt.bench.harness.time_interleaved).

Shape legend: B batch, T sequence length, N = B·T tokens, d_in/d_out layer sizes, r rank.
"""

import copy

import torch
import torch.nn as nn

from lora import LoRALinear, apply_lora, merge_and_unload, merge_lora
from minigpt.bench.harness import make_section, make_target, ms, spread_ms, time_interleaved
from minigpt.bench.train_step import LORA, random_batch
from minigpt.model import GPT, GPTConfig

VARIANTS = ("base", "lora unmerged", "lora merged", "merged + unloaded")


def _inference_cases(quick):
    """(label, preset, T, batch sizes) for section 2: batch 1 (interactive use) and a training batch."""
    if quick:
        return [("test", "test", 16, (1, 2))]
    return [("tiny", "tiny", 128, (1, 8)), ("gpt2-shaped", "gpt2", 64, (1, 4))]


def inference_variants(preset, seed):
    """The four models of section 2, in eval mode, with nonzero B so the merged weights really change."""
    torch.manual_seed(seed)
    base = GPT(GPTConfig.from_preset(preset)).eval()
    lora = apply_lora(copy.deepcopy(base), **LORA).eval()
    with torch.no_grad():
        for m in lora.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(std=0.02)  # a trained adapter, not the zero init
    merged = copy.deepcopy(lora)
    merge_lora(merged)
    unloaded = merge_and_unload(copy.deepcopy(lora))
    return dict(zip(VARIANTS, (base, lora, merged, unloaded), strict=True))


def run_inference(cfg):
    """Section 2: forward latency of base vs LoRA unmerged vs merged, at batch 1 and a training batch."""
    rows, targets, results = [], [], []
    for label, preset, seq_len, batches in _inference_cases(cfg.quick):
        models = inference_variants(preset, cfg.seed)
        divisor = 2 if preset == "gpt2" and not cfg.quick else 1  # GPT-2-sized forwards take about a second
        for batch in batches:
            x, _ = random_batch(models["base"].config.vocab_size, batch, seq_len, cfg.seed)
            fns = {name: _forward_fn(model, x) for name, model in models.items()}
            with torch.inference_mode():
                timings = time_interleaved(fns, cfg.warmup, max(3, cfg.repeats // divisor))
            base = timings["base"]["median"]
            for name in VARIANTS:
                t = timings[name]
                rows.append([label, batch, seq_len, name, ms(t["median"]), spread_ms(t), f"{t['median'] / base:.3f}"])
                results.append(dict(model=label, preset=preset, batch=batch, seq_len=seq_len, variant=name,
                                    forward=t, ratio_to_base=t["median"] / base))
            for name in ("lora merged", "merged + unloaded"):
                ratio = timings[name]["median"] / base
                targets.append(make_target(f"{label}, B={batch}: {name} / base", ratio, "<= 1.03", ratio <= 1.03))
            ratio = timings["lora unmerged"]["median"] / base
            targets.append(make_target(f"{label}, B={batch}: lora unmerged / base (overhead reported)", ratio,
                                       "reported", True))
        del models
    notes = [f"LoRA rank {LORA['rank']} on {LORA['targets']}; forward only, eval mode, torch.inference_mode(); "
             "'ratio' is the median over the base model's median."]
    headers = ["model", "B", "T", "variant", "forward ms", "IQR ms", "ratio"]
    return make_section("Inference: base vs LoRA unmerged vs LoRA merged", [dict(headers=headers, rows=rows)],
                        targets, notes, results)


def _forward_fn(model, x):
    def forward():
        return model(x)
    return forward


def _layer_cases(quick):
    """(d_in, d_out, r) for section 3: GPT-2 small's projections and ranks from 8 to 64."""
    if quick:
        return [(16, 48, 4)], (2, 8)
    return [(128, 384, 8), (768, 768, 8), (768, 2304, 8), (768, 3072, 8), (3072, 768, 8), (768, 2304, 64)], (4, 64)


def flop_ratios(d_in, d_out, rank):
    """Multiply-add ratios LoRA / nn.Linear per token, forward and forward+backward.

    Forward: d_in·d_out + r(d_in + d_out) against d_in·d_out. Backward of a trained nn.Linear computes
    the input and the weight gradient (2 d_in·d_out); with a frozen base only the input gradient is
    needed (d_in·d_out), plus about two side-path products per matrix, 2 r(d_in + d_out).
    """
    dense, side = d_in * d_out, rank * (d_in + d_out)
    return (dense + side) / dense, (2 * dense + 3 * side) / (3 * dense)


def layer_fns(d_in, d_out, rank, batch, seq_len, seed):
    """Forward (no grad) and forward+backward closures for an nn.Linear and a LoRALinear of one shape."""
    torch.manual_seed(seed)
    linear = nn.Linear(d_in, d_out)  # trained in full fine-tuning
    lora = LoRALinear(copy.deepcopy(linear), rank=rank, alpha=2 * rank)
    x = torch.randn(batch, seq_len, d_in, requires_grad=True)  # mid-network: the input needs a gradient too
    grad_out = torch.randn(batch, seq_len, d_out)

    def forward(layer):
        def fn():
            with torch.no_grad():
                return layer(x)
        return fn

    def forward_backward(layer):
        def fn():
            layer.zero_grad(set_to_none=True)
            x.grad = None
            layer(x).backward(grad_out)
        return fn

    return ({"linear": forward(linear), "lora": forward(lora)},
            {"linear": forward_backward(linear), "lora": forward_backward(lora)})


def run_lora_layer(cfg):
    """Section 3: one LoRALinear vs one nn.Linear, forward and forward+backward, per (d_in, d_out, r)."""
    cases, (batch, seq_len) = _layer_cases(cfg.quick)
    rows, results = [], []
    for d_in, d_out, rank in cases:
        fwd, fwd_bwd = layer_fns(d_in, d_out, rank, batch, seq_len, cfg.seed)
        tf = time_interleaved(fwd, cfg.warmup, cfg.repeats)
        tb = time_interleaved(fwd_bwd, cfg.warmup, cfg.repeats)
        flop_f, flop_b = flop_ratios(d_in, d_out, rank)
        rf, rb = tf["lora"]["median"] / tf["linear"]["median"], tb["lora"]["median"] / tb["linear"]["median"]
        rows.append([d_in, d_out, rank, ms(tf["linear"]["median"]), ms(tf["lora"]["median"]), f"{rf:.2f}",
                     f"{flop_f:.2f}", ms(tb["linear"]["median"]), ms(tb["lora"]["median"]), f"{rb:.2f}", f"{flop_b:.2f}"])
        results.append(dict(d_in=d_in, d_out=d_out, rank=rank, tokens=batch * seq_len, forward=tf,
                            forward_backward=tb, forward_ratio=rf, forward_backward_ratio=rb,
                            forward_flop_ratio=flop_f, forward_backward_flop_ratio=flop_b))
    headers = ["d_in", "d_out", "r", "linear fwd ms", "lora fwd ms", "fwd ratio", "fwd FLOP ratio",
               "linear fwd+bwd ms", "lora fwd+bwd ms", "fwd+bwd ratio", "fwd+bwd FLOP ratio"]
    notes = [f"input (B={batch}, T={seq_len}, d_in), N={batch * seq_len} tokens; the nn.Linear trains its weight "
             "(full fine-tuning), the LoRALinear's base is frozen; the input requires a gradient, as mid-network.",
             "FLOP ratio: the multiply-adds LoRA needs relative to nn.Linear (see flop_ratios); a measured ratio "
             "above it is per-call overhead of the extra small operations."]
    return make_section("One LoRALinear vs one nn.Linear", [dict(headers=headers, rows=rows)], notes=notes,
                        results=results)
