"""Benchmark sections 1 and 5: the cost of one training step.

Section 1 trains the same model on the same batch three ways: full fine-tuning (every weight trained),
LoRA (base frozen, rank-r adapters trained) and QLoRA (every linear weight stored in NF4, the adapters
trained in float32). Section 5 times plain training of nanoGPT's CPU character model, eager and under
torch.compile. Every configuration runs in its own subprocess (see bench_harness.run_isolated), so
its peak memory is its own.

A step is forward, backward, AdamW update, zero_grad: what a training loop does per batch. The batch
holds random token ids: speed and memory do not depend on what the tokens say.

Shape legend: B batch, T sequence length, V vocab size.
"""

import time

import torch

from minigpt.bench_harness import (
    current_rss_bytes,
    human_bytes,
    make_section,
    make_target,
    mib,
    ms,
    optimizer_state_bytes,
    peak_rss_bytes,
    pin_threads,
    reset_peak_rss,
    run_isolated,
    spread_ms,
    tensor_bytes,
    time_fn,
)
from minigpt.model import GPT, GPTConfig

GRAD_CLIP = 1.0  # minigpt.train's default max gradient norm

LORA = dict(rank=8, alpha=16, targets=["c_attn"])  # PEFT's default for GPT-2: LoRA on the fused q/k/v projection
QLORA_QUANTIZED = "all-linear"                      # QLoRA quantises every linear layer but the (tied) output head
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)             # QLoRA §3: 4-bit codes, 8-bit absmax per 64, fp32 per 256 absmax


def _train_models(quick):
    """(label, preset, batch B, sequence length T, repeats divisor) for section 1."""
    if quick:
        return [("test", "test", 2, 16, 1)]
    # GPT-2 small steps take seconds on a laptop CPU, so they get a third of the repeats
    return [("tiny", "tiny", 8, 128, 1), ("gpt2-shaped", "gpt2", 4, 64, 3)]


def build_model(preset, method, seed):
    """A GPT from `preset` prepared for `method` ("full", "lora" or "qlora"), in training mode."""
    from lora.inject import apply_lora

    torch.manual_seed(seed)
    model = GPT(GPTConfig.from_preset(preset))
    if method == "qlora":
        from lora.nf4_linear import quantize_model

        quantize_model(model, targets=QLORA_QUANTIZED)
    if method in ("lora", "qlora"):
        apply_lora(model, **LORA)
    elif method != "full":
        raise ValueError(f"method={method!r}: choose 'full', 'lora' or 'qlora'")
    return model.train()


def random_batch(vocab_size, batch, seq_len, seed):
    """Inputs and next-token targets, (B, T) each, of uniformly random token ids."""
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(vocab_size, (batch, seq_len + 1), generator=g)
    return data[:, :-1].clone(), data[:, 1:].clone()  # clone: contiguous, as a data loader's batches are


def make_optimizer(model):
    """AdamW as minigpt.train sets it up by default: nanoGPT's shakespeare_char (lr 1e-3, betas 0.9/0.99,
    weight decay 0.1 on matrices only), over the parameters that require grad."""
    from minigpt.train import TrainConfig, configure_optimizer  # imported here: only the jobs need it

    return configure_optimizer(model, TrainConfig())


def make_step(model, optimizer, x, y, grad_clip=GRAD_CLIP):
    """One training step as a closure: forward, backward, gradient clipping, AdamW update, zero_grad,
    as minigpt.train runs it (without its batch sampling and logging)."""
    params = [p for g in optimizer.param_groups for p in g["params"]]

    def step():
        _, loss = model(x, y)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def storage_bytes(model):
    """Bytes the model's parameters and buffers occupy, and the part of it in NF4-quantised layers
    together with the float32 bytes those weights would take unquantised."""
    total = tensor_bytes([*model.parameters(), *model.buffers()])
    quant, quant_fp32 = 0, 0
    for module in model.modules():
        if callable(getattr(module, "dequantize_weight", None)) and hasattr(module, "in_features"):
            weight_tensors = [b for name, b in module.named_buffers(recurse=False) if name != "bias"]
            quant += tensor_bytes(weight_tensors)
            quant_fp32 += module.in_features * module.out_features * 4
    return total, quant, quant_fp32


def train_step_job(preset, method, batch, seq_len, threads, warmup, repeats, seed):
    """Subprocess job of section 1: byte counts, step timing and peak memory for one model and method."""
    pin_threads(threads)
    start_rss = current_rss_bytes()  # torch imported, nothing built yet
    model = build_model(preset, method, seed)
    x, y = random_batch(model.config.vocab_size, batch, seq_len, seed)
    build_peak = peak_rss_bytes()  # QLoRA builds the float model first, then quantises it
    training_peak_known = reset_peak_rss()
    optimizer = make_optimizer(model)
    # one step by hand, to read gradients and optimizer state from the tensors themselves
    _, loss = model(x, y)
    loss.backward()
    grad_bytes = tensor_bytes(p.grad for p in model.parameters())  # frozen weights must hold no .grad
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    total, quant, quant_fp32 = storage_bytes(model)
    timing = time_fn(make_step(model, optimizer, x, y), warmup, repeats)
    train_peak = peak_rss_bytes()
    return dict(preset=preset, method=method, batch=batch, seq_len=seq_len, threads=torch.get_num_threads(),
                params=sum(p.numel() for p in model.parameters()),
                trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
                grad_bytes=grad_bytes, optimizer_bytes=optimizer_state_bytes(optimizer), weight_bytes=total,
                quantized_bytes=quant, quantized_fp32_bytes=quant_fp32, step=timing,
                tokens_per_s=batch * seq_len / timing["median"], start_rss_bytes=start_rss,
                process_peak_rss_bytes=max(build_peak, train_peak),
                training_peak_rss_bytes=train_peak if training_peak_known else None)


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def _train_targets(label, by_method):
    """Section 1's targets for one model, from the three results keyed by method."""
    full, lora, qlora = (by_method.get(m, {}) for m in ("full", "lora", "qlora"))
    ok = [r.get("status") == "ok" for r in (full, lora, qlora)]
    step = _ratio(lora["step"]["median"], full["step"]["median"]) if ok[0] and ok[1] else None
    state = _ratio(lora.get("grad_bytes", 0) + lora.get("optimizer_bytes", 0),
                   full.get("grad_bytes", 0) + full.get("optimizer_bytes", 0)) if ok[0] and ok[1] else None
    frac = _ratio(lora.get("trainable"), full.get("params")) if ok[0] and ok[1] else None
    quant = _ratio(qlora.get("quantized_bytes"), qlora.get("quantized_fp32_bytes")) if ok[2] else None
    return [
        make_target(f"{label}: LoRA step time / full step time", step, "<= 0.85", step is not None and step <= 0.85),
        make_target(f"{label}: LoRA (gradient + optimizer bytes) / full's", state,
                    f"= trainable fraction {frac:.4f}" if frac else "= trainable fraction",
                    state is not None and frac is not None and abs(state / frac - 1) < 0.01, digits=4),
        make_target(f"{label}: QLoRA quantised weight bytes / their float32 bytes", quant,
                    f"= 4.127/32 = {NF4_BITS / 32:.4f}", quant is not None and abs(quant / (NF4_BITS / 32) - 1) < 0.005,
                    digits=4),
    ]


def _train_row(label, r, full):
    if r.get("status") != "ok":
        return [label, r.get("method"), f"failed: {r.get('error')}"] + [None] * 10
    full_ok = full.get("status") == "ok"
    state = r["grad_bytes"] + r["optimizer_bytes"]
    full_state = full["grad_bytes"] + full["optimizer_bytes"] if full_ok else None
    step_ratio = _ratio(r["step"]["median"], full["step"]["median"]) if full_ok else None
    return [label, r["method"], f"{r['trainable']:,}", ms(r["step"]["median"]), spread_ms(r["step"]),
            f"{r['tokens_per_s']:,.0f}", None if step_ratio is None else f"{step_ratio:.2f}",
            human_bytes(r["grad_bytes"]), human_bytes(r["optimizer_bytes"]),
            None if full_state is None else f"{state / full_state:.4f}", human_bytes(r["weight_bytes"]),
            mib(r["process_peak_rss_bytes"]), mib(r["training_peak_rss_bytes"])]


def run_train_step(cfg):
    """Section 1: full fine-tuning vs LoRA vs QLoRA, one subprocess per model and method."""
    rows, targets, results = [], [], []
    for label, preset, batch, seq_len, divisor in _train_models(cfg.quick):
        by_method = {}
        for method in ("full", "lora", "qlora"):
            kwargs = dict(preset=preset, method=method, batch=batch, seq_len=seq_len, threads=cfg.threads,
                          warmup=cfg.warmup, repeats=max(3, cfg.repeats // divisor), seed=cfg.seed)
            r = run_isolated("minigpt.bench_train:train_step_job", kwargs, cfg.timeout)
            by_method[method] = r = dict(r, label=label, method=method)
            results.append(r)
        for method in ("full", "lora", "qlora"):
            rows.append(_train_row(label, by_method[method], by_method["full"]))
        targets += _train_targets(label, by_method)
    starts = [r["start_rss_bytes"] for r in results if r.get("status") == "ok"]
    start = mib(min(starts)) if starts else "?"
    headers = ["model", "method", "trainable", "step ms", "IQR ms", "tokens/s", "step / full", "grads",
               "optimizer state", "(grads+state) / full", "weights", "peak RSS MiB", "training peak MiB"]
    shapes = ", ".join(f"{label} (B={b}, T={t})" for label, _, b, t, _ in _train_models(cfg.quick))
    notes = [f"models and batches: {shapes}; LoRA rank {LORA['rank']}, alpha {LORA['alpha']} on {LORA['targets']}; "
             f"QLoRA: {QLORA_QUANTIZED} quantised to NF4 with double quantisation, same adapters; a step is "
             "forward, backward, clip_grad_norm_(1.0), AdamW (minigpt.train.configure_optimizer), zero_grad.",
             "bytes are read from the tensors (p.grad, optimizer.state, parameters and buffers). Peak RSS: the "
             "subprocess's resident high-water mark (VmHWM) over its whole life; training peak: the same counter "
             "restarted once the model is built (QLoRA builds a float model, then quantises it). "
             f"Importing torch alone takes {start} MiB."]
    return make_section("Training step: full fine-tuning vs LoRA vs QLoRA", [dict(headers=headers, rows=rows)],
                        targets, notes, results)


def throughput_job(use_compile, threads, warmup, repeats, seed, batch=12, block=64, preset="cpu-char"):
    """Subprocess job of section 5: full training of nanoGPT's CPU model, eager or torch.compile'd."""
    pin_threads(threads)
    torch.manual_seed(seed)
    model = GPT(GPTConfig.from_preset(preset, block_size=block)).train()
    optimizer = make_optimizer(model)
    x, y = random_batch(model.config.vocab_size, batch, block, seed)
    step = make_step(torch.compile(model) if use_compile else model, optimizer, x, y)
    start = time.perf_counter()
    step()  # with compile: traces and compiles forward and backward here
    first = time.perf_counter() - start
    timing = time_fn(step, warmup, repeats)
    return dict(preset=preset, batch=batch, block=block, compile=use_compile, first_step_s=first, step=timing,
                tokens_per_s=batch * block / timing["median"], threads=torch.get_num_threads())


def run_throughput(cfg):
    """Section 5: tokens/s of nanoGPT's CPU configuration (cpu-char, B=12, T=64), eager vs torch.compile."""
    rows, results = [], []
    for compiled in (False, True):
        name = "torch.compile" if compiled else "eager"
        if compiled and cfg.quick:
            r = dict(status="skipped", error="skipped with --quick (compiling takes minutes on a CPU)")
        else:
            kwargs = dict(use_compile=compiled, threads=cfg.threads, warmup=max(cfg.warmup, 3 if compiled else 1),
                          repeats=cfg.repeats, seed=cfg.seed)
            r = run_isolated("minigpt.bench_train:throughput_job", kwargs, cfg.timeout)
        results.append(dict(r, mode=name))
        if r.get("status") != "ok":
            rows.append([name, f"{r['status']}: {r['error']}", None, None, None, None])
            continue
        rows.append([name, ms(r["step"]["median"]), spread_ms(r["step"]), f"{r['tokens_per_s']:,.0f}",
                     f"{r['first_step_s']:.1f}", mib(r["peak_rss_bytes"])])
    eager, comp = results
    speedup = _ratio(eager.get("step", {}).get("median"), comp.get("step", {}).get("median"))
    notes = ["preset cpu-char (4 layers, 4 heads, 128 wide, vocab 256), batch 12, block 64, dropout 0: nanoGPT's "
             "documented CPU recipe; full training, steps as in section 1 (minigpt.train's AdamW and clipping).",
             "first step includes torch.compile's tracing and C++ compilation; it is not in the median.",
             f"torch.compile speed-up: {speedup:.2f}x" if speedup else "torch.compile speed-up: not measured"]
    headers = ["mode", "step ms", "IQR ms", "tokens/s", "first step s", "peak RSS MiB"]
    return make_section("MiniGPT training throughput (nanoGPT's CPU configuration)",
                        [dict(headers=headers, rows=rows)], notes=notes, results=results)
