"""Benchmark section 1: one training step, full fine-tuning vs LoRA vs QLoRA.

The same model is trained on the same batch three ways: full fine-tuning (every weight trained), LoRA
(base frozen, rank-r adapters on c_attn trained; "lora all-linear": on every linear layer of the blocks,
the fine-tune's default) and QLoRA (every linear weight stored in NF4, the adapters trained in float32),
beside a "frozen" floor that trains no weight at all (where a LoRA step's time goes: freeze_all_but_first_bias).
Beside each measured step-time ratio stands the ratio minigpt.budget predicts from FLOPs, and beside
each step's achieved FLOP/s (the calculator's FLOPs over the measured time) the rate of a plain matmul
at the model's MLP shape, timed in the same process. Step times come from one subprocess that holds every method and times them
round-robin, so the ratios are measured side by side; bytes and peak memory come from one subprocess
per method (see minigpt.bench.harness.run_isolated), so each peak is that method's own.

A step is forward, backward, gradient clipping, AdamW update, zero_grad: what minigpt.trainer does per
batch. The batch holds random token ids: speed and memory do not depend on what the tokens say.

Shape legend: B batch, T sequence length, V vocab size.
"""


import torch

from lora import LinearNF4, apply_lora, model_weight_bytes, nbytes, quantize_model
from minigpt.bench.harness import (
    current_rss_bytes,
    human_bytes,
    make_section,
    make_target,
    mib,
    ms,
    optimizer_state_bytes,
    peak_rss_bytes,
    pin_threads,
    release_free_memory,
    reset_peak_rss,
    run_isolated,
    spread_ms,
    tensor_bytes,
    time_interleaved,
)
from minigpt.budget.costs import TrainPlan, flops_per_token
from minigpt.budget.machine import model_matmul_rate
from minigpt.budget.shapes import named_shape
from minigpt.model import GPT, GPTConfig
from minigpt.optim import configure_optimizer
from minigpt.trainer import TrainConfig

GRAD_CLIP = 1.0  # minigpt.trainer's default max gradient norm

LORA = dict(rank=8, alpha=16, targets=["c_attn"])  # PEFT's default for GPT-2: LoRA on the fused q/k/v projection
LORA_ALL = dict(LORA, targets="all-linear")         # the fine-tune's default: every linear layer of the blocks
QLORA_QUANTIZED = "all-linear"                      # QLoRA quantises every linear layer but the (tied) output head
METHODS = ("full", "lora", "qlora")
ALL_LINEAR = "lora all-linear"
FROZEN = "frozen"                                    # no weight gradient at all: the floor of any adapter method
TIMED = (*METHODS, ALL_LINEAR, FROZEN)               # every method, timed side by side
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)             # QLoRA §3: 4-bit codes, 8-bit absmax per 64, fp32 per 256 absmax


def _train_models(quick):
    """(label, preset, batch B, sequence length T, repeats divisor) for section 1."""
    if quick:
        return [("test", "test", 2, 16, 1)]
    # GPT-2 small steps take seconds on a laptop CPU, so they get a third of the repeats; tiny at B=16 is
    # the fine-tune's own shape (python -m minigpt.finetune: 16 x 128 tokens)
    return [("tiny", "tiny", 8, 128, 1), ("tiny, B=16", "tiny", 16, 128, 1), ("gpt2-shaped", "gpt2", 4, 64, 3)]


def train_plan(method):
    """The minigpt.budget TrainPlan of a section 1 method."""
    if method == "full":
        return TrainPlan("full")
    lora = LORA_ALL if method == ALL_LINEAR else LORA
    targets = lora["targets"] if isinstance(lora["targets"], str) else ", ".join(lora["targets"])
    return TrainPlan("qlora" if method == "qlora" else "lora", lora["rank"], targets)


def predicted_step_flops(preset, method, batch, seq_len):
    """Training FLOPs of one step of `method` on `preset` at B x T tokens (minigpt.budget.flops_per_token).

    FROZEN's are the all-linear LoRA step's without the adapters' own products: the same forward, the
    same input gradients, no weight gradient."""
    tokens = batch * seq_len  # LoRALinear folds B A into W0 where that is cheaper (lora.backward)
    flops = flops_per_token(named_shape(preset), train_plan(ALL_LINEAR if method == FROZEN else method), seq_len, tokens)
    return (flops["train"] - (flops["lora"] if method == FROZEN else 0)) * tokens


def build_model(preset, method, seed):
    """A GPT from `preset` prepared for `method` ("full", "lora" or "qlora"), in training mode."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig.from_preset(preset))
    if method == "qlora":
        quantize_model(model, targets=QLORA_QUANTIZED)
    if method in ("lora", "qlora"):
        apply_lora(model, **LORA)
    elif method == ALL_LINEAR:
        apply_lora(model, **LORA_ALL)
    elif method == FROZEN:
        freeze_all_but_first_bias(model)
    elif method != "full":
        raise ValueError(f"method={method!r}: choose one of {list(TIMED)}")
    return model.train()


def freeze_all_but_first_bias(model):
    """FROZEN: every parameter frozen but the first block's c_attn bias, so that a step runs the forward
    and the input gradients the all-linear LoRA step runs (down to the first block's c_attn output, as
    there, where nothing below needs a gradient) and not one weight gradient. No adapter method can be
    faster: LoRA's step is this one plus the adapters' own products (lora.backward), full fine-tuning's
    this one plus every gᵀx. The one trained bias costs a sum over positions."""
    model.requires_grad_(False)
    bias = model.transformer.h[0].attn.c_attn.bias
    if bias is None:
        raise ValueError("the frozen floor needs a model with biases (GPTConfig.bias=True)")
    bias.requires_grad_(True)


def random_batch(vocab_size, batch, seq_len, seed):
    """Inputs and next-token targets, (B, T) each, of uniformly random token ids."""
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(vocab_size, (batch, seq_len + 1), generator=g)
    return data[:, :-1].clone(), data[:, 1:].clone()  # clone: contiguous, as a data loader's batches are


def make_optimizer(model):
    """AdamW as minigpt.trainer sets it up by default: nanoGPT's shakespeare_char (lr 1e-3, betas 0.9/0.99,
    weight decay 0.1 on matrices only), over the parameters that require grad."""
    return configure_optimizer(model, TrainConfig())


def make_step(model, optimizer, x, y, grad_clip=GRAD_CLIP):
    """One training step as a closure: forward, backward, gradient clipping, AdamW update, zero_grad,
    as minigpt.trainer runs it (without its batch sampling and logging)."""
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
    """(bytes of all parameters and buffers, bytes of the NF4 layers' stored weights, float32 bytes of
    those same weights), each read from the tensors."""
    nf4 = [m for m in model.modules() if isinstance(m, LinearNF4)]
    return (model_weight_bytes(model), sum(nbytes(m.weight_q) for m in nf4),
            sum(4 * m.num_quantized_parameters() for m in nf4))


def train_memory_job(preset, method, batch, seq_len, threads, seed, steps=3):
    """Subprocess job of section 1: bytes read from the tensors and peak memory, one model and method."""
    pin_threads(threads)
    start_rss = current_rss_bytes()  # torch imported, nothing built yet
    model = build_model(preset, method, seed)
    x, y = random_batch(model.config.vocab_size, batch, seq_len, seed)
    build_peak = peak_rss_bytes()  # QLoRA builds the float model first, then quantises it
    release_free_memory()  # so the freed float weights do not count in the training peak
    training_peak_known = reset_peak_rss()
    optimizer = make_optimizer(model)
    _, loss = model(x, y)  # one step by hand, to read the gradients before zero_grad drops them
    loss.backward()
    grad_bytes = tensor_bytes(p.grad for p in model.parameters())  # frozen weights must hold no .grad
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    step = make_step(model, optimizer, x, y)
    for _ in range(steps - 1):  # the peak of a steady step, not only of the first
        step()
    total, quant, quant_fp32 = storage_bytes(model)
    train_peak = peak_rss_bytes()
    return dict(preset=preset, method=method, params=sum(p.numel() for p in model.parameters()),
                trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
                grad_bytes=grad_bytes, optimizer_bytes=optimizer_state_bytes(optimizer), weight_bytes=total,
                quantized_bytes=quant, quantized_fp32_bytes=quant_fp32, start_rss_bytes=start_rss,
                process_peak_rss_bytes=max(build_peak, train_peak),
                training_peak_rss_bytes=train_peak if training_peak_known else None)


def train_timing_job(preset, batch, seq_len, threads, warmup, repeats, seed):
    """Subprocess job of section 1: step times of every method on one model, timed round-robin, then
    the FLOP/s of a plain matmul at the model's MLP shape (minigpt.budget.machine.model_matmul_rate)."""
    pin_threads(threads)
    steps = {}
    for method in TIMED:
        model = build_model(preset, method, seed)
        x, y = random_batch(model.config.vocab_size, batch, seq_len, seed)
        steps[method] = make_step(model, make_optimizer(model), x, y)
    timings = time_interleaved(steps, warmup, repeats)
    rate = model_matmul_rate(named_shape(preset), batch, seq_len)
    return dict(preset=preset, batch=batch, seq_len=seq_len, threads=torch.get_num_threads(), step=timings,
                tokens_per_s={m: batch * seq_len / t["median"] for m, t in timings.items()}, matmul_flops_per_s=rate,
                flops_per_s={m: predicted_step_flops(preset, m, batch, seq_len) / t["median"]
                             for m, t in timings.items()})


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def _train_targets(label, mem, timing):
    """Section 1's targets for one model: mem {method: memory job result}, timing the timing job's."""
    full, lora, qlora = (mem[m] for m in METHODS)
    ok = [r.get("status") == "ok" for r in (full, lora, qlora)]
    step = (_ratio(timing["step"]["lora"]["median"], timing["step"]["full"]["median"])
            if timing.get("status") == "ok" else None)
    state = (_ratio(lora["grad_bytes"] + lora["optimizer_bytes"], full["grad_bytes"] + full["optimizer_bytes"])
             if ok[0] and ok[1] else None)
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
        *_all_linear_targets(label, mem, timing),
    ]


def _all_linear_targets(label, mem, timing):
    """The all-linear LoRA's step-time ratio beside the FLOP ratio minigpt.budget predicts (reported), and
    its gradient and optimizer bytes against its trainable fraction."""
    if timing.get("status") != "ok":
        return []
    step = _ratio(timing["step"][ALL_LINEAR]["median"], timing["step"]["full"]["median"])
    predicted = _ratio(predicted_step_flops(timing["preset"], ALL_LINEAR, timing["batch"], timing["seq_len"]),
                       predicted_step_flops(timing["preset"], "full", timing["batch"], timing["seq_len"]))
    out = [make_target(f"{label}: LoRA all-linear step time / full (predicted FLOPs ratio {predicted:.3f}, reported)",
                       step, "reported", True), *_floor_targets(label, timing)]
    r, full = mem.get(ALL_LINEAR, {}), mem["full"]
    if r.get("status") == "ok" and full.get("status") == "ok":
        state = _ratio(r["grad_bytes"] + r["optimizer_bytes"], full["grad_bytes"] + full["optimizer_bytes"])
        frac = r["trainable"] / full["params"]
        out.append(make_target(f"{label}: LoRA all-linear (gradient + optimizer bytes) / full's", state,
                               f"= trainable fraction {frac:.4f}", abs(state / frac - 1) < 0.01, digits=4))
    return out


def _floor_targets(label, timing):
    """Where the all-linear LoRA step's time goes, from the frozen floor F (no weight gradient at all):
    full = F + W (every gᵀx and its optimizer update), LoRA = F + E (the adapters' own products), so
    LoRA / full = (F + E) / (F + W). Reported: E / W says how much of the skipped work LoRA spends
    again, F / full how close to full's time any adapter method must stay."""
    t = {m: timing["step"][m]["median"] for m in ("full", ALL_LINEAR, FROZEN)}
    weight_grads, own = t["full"] - t[FROZEN], t[ALL_LINEAR] - t[FROZEN]
    return [make_target(f"{label}: frozen floor step time / full (no weight gradient at all, reported)",
                        _ratio(t[FROZEN], t["full"]), "reported", True),
            make_target(f"{label}: LoRA all-linear's own time / the weight gradients' time, (lora - frozen) / "
                        "(full - frozen) (reported)", _ratio(own, weight_grads), "reported", True)]


def _time_cells(method, timing):
    """step ms, IQR, tokens/s, step / full, predicted FLOPs / full, achieved GFLOP/s, matmul GFLOP/s."""
    if timing.get("status") != "ok":
        return [f"failed: {timing.get('error')}"] + [None] * 6
    t, full = timing["step"][method], timing["step"]["full"]
    shape = (timing["preset"], timing["batch"], timing["seq_len"])
    predicted = predicted_step_flops(shape[0], method, *shape[1:]) / predicted_step_flops(shape[0], "full", *shape[1:])
    return [ms(t["median"]), spread_ms(t), f"{timing['tokens_per_s'][method]:,.0f}", f"{t['median'] / full['median']:.2f}",
            f"{predicted:.2f}", f"{timing['flops_per_s'][method] / 1e9:.3g}", f"{timing['matmul_flops_per_s'] / 1e9:.3g}"]


def _train_row(label, method, mem, timing):
    """One table row: the timing columns from the timing job, the byte and memory columns from mem."""
    r, full = mem[method], mem["full"]
    time_cells = _time_cells(method, timing)
    if r.get("status") != "ok":
        return [label, method, None] + time_cells + [f"failed: {r.get('error')}"] + [None] * 5
    state = r["grad_bytes"] + r["optimizer_bytes"]
    full_state = full["grad_bytes"] + full["optimizer_bytes"] if full.get("status") == "ok" else None
    return ([label, method, f"{r['trainable']:,}"] + time_cells
            + [human_bytes(r["grad_bytes"]), human_bytes(r["optimizer_bytes"]),
               None if full_state is None else f"{state / full_state:.4f}", human_bytes(r["weight_bytes"]),
               mib(r["process_peak_rss_bytes"]), mib(r["training_peak_rss_bytes"])])


def run_train_step(cfg):
    """Section 1: full fine-tuning vs LoRA vs QLoRA: one subprocess per model times every method
    side by side; one subprocess per model and method reads bytes and peak memory."""
    rows, targets, results = [], [], []
    for label, preset, batch, seq_len, divisor in _train_models(cfg.quick):
        shape = dict(preset=preset, batch=batch, seq_len=seq_len, threads=cfg.threads, seed=cfg.seed)
        timing = run_isolated("minigpt.bench.train_step:train_timing_job",
                              dict(shape, warmup=cfg.warmup, repeats=max(3, cfg.repeats // divisor)), cfg.timeout)
        mem = {m: run_isolated("minigpt.bench.train_step:train_memory_job", dict(shape, method=m), cfg.timeout)
               for m in TIMED}
        results.append(dict(label=label, timing=timing, memory=mem))
        rows += [_train_row(label, m, mem, timing) for m in TIMED]
        targets += _train_targets(label, mem, timing)
    starts = [r["start_rss_bytes"] for res in results for r in res["memory"].values() if r.get("status") == "ok"]
    headers = ["model", "method", "trainable", "step ms", "IQR ms", "tokens/s", "step / full",
               "predicted FLOPs / full", "achieved GFLOP/s", "matmul GFLOP/s", "grads",
               "optimizer state", "(grads+state) / full", "weights", "peak RSS MiB", "training peak MiB"]
    shapes = ", ".join(f"{label} (B={b}, T={t})" for label, _, b, t, _ in _train_models(cfg.quick))
    notes = [f"models and batches: {shapes}; LoRA rank {LORA['rank']}, alpha {LORA['alpha']} on {LORA['targets']}; "
             f"QLoRA: {QLORA_QUANTIZED} quantised to NF4 with double quantisation, same adapters; a step is "
             "forward, backward, clip_grad_norm_(1.0), AdamW (minigpt.optim.configure_optimizer), zero_grad.",
             f"{ALL_LINEAR}: LoRA rank {LORA_ALL['rank']} on every linear layer of the blocks (the fine-tune's "
             "default). predicted FLOPs / full: minigpt.budget.flops_per_token's training FLOPs; achieved GFLOP/s: "
             "those FLOPs over the measured median step; matmul GFLOP/s: a float32 (B·T, C) @ (C, 4C) product "
             "timed in the same process (minigpt.budget.machine.model_matmul_rate). A step also runs norms, GELU, "
             "softmax and AdamW, which the FLOPs leave out, so the achieved rate sits below the matmul's.",
             f"{FROZEN}: every weight frozen (one bias of the first block trained, so the backward runs): the "
             "forward and the input gradients of the LoRA step without the adapters and without one weight "
             "gradient, the floor no adapter method beats. full - frozen is what the weight gradients cost, "
             f"{ALL_LINEAR} - frozen what the adapters' own products cost (lora.backward).",
             "step times: every method in one process, timed round-robin. Bytes are read from the tensors "
             "(p.grad, optimizer.state, parameters and buffers), each method in a process of its own. Peak RSS: "
             "that process's resident high-water mark (VmHWM) over its life; training peak: the same counter "
             "restarted once the model is built and freed memory is returned to the OS (QLoRA builds a float "
             f"model, then quantises it). The process holds {mib(min(starts)) if starts else '?'} MiB before "
             "building anything (Python and torch).",]
    return make_section("Training step: full fine-tuning vs LoRA vs QLoRA", [dict(headers=headers, rows=rows)],
                        targets, notes, results)
