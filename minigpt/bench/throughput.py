"""Benchmark section 5: MiniGPT training throughput on nanoGPT's CPU configuration, eager and compiled.

nanoGPT documents a laptop-CPU run of a 4-layer, 128-wide character model with batch 12 and block 64.
Section 5 times full training steps of that model (minigpt's cpu-char preset) as they are and under
torch.compile, side by side in a subprocess: compiling can take minutes, or fail on a machine without
a working C++ toolchain, and either is reported instead of ending the run.

Shape legend: B batch (12), T block (64).
"""

import time

import torch
import torch._inductor.config

from minigpt.bench.harness import make_section, ms, pin_threads, run_inline, run_isolated, spread_ms, time_interleaved
from minigpt.bench.train_step import make_optimizer, make_step, random_batch
from minigpt.model import GPT, GPTConfig


def throughput_job(use_compile, threads, warmup, repeats, seed, batch=12, block=64, preset="cpu-char"):
    """Subprocess job of section 5: full training steps of nanoGPT's CPU model, eager and (if
    use_compile) torch.compile'd, two copies of the same model timed round-robin."""
    pin_threads(threads)
    steps, first_step_s, result = {}, {}, {}
    for mode in ("eager", "torch.compile") if use_compile else ("eager",):
        torch.manual_seed(seed)
        model = GPT(GPTConfig.from_preset(preset, block_size=block)).train()
        x, y = random_batch(model.config.vocab_size, batch, block, seed)
        if mode == "torch.compile":
            # a cold compile, as on a first run: no kernels reused from inductor's on-disk cache of earlier runs
            torch._inductor.config.force_disable_caches = True
            model = torch.compile(model)
        step = make_step(model, make_optimizer(model), x, y)
        start = time.perf_counter()
        try:
            step()  # with compile: traces and compiles forward and backward here
        except Exception as e:  # e.g. no working C++ compiler: report it, keep the eager figures
            result["compile_error"] = f"{type(e).__name__}: {e}"
            break
        first_step_s[mode] = time.perf_counter() - start
        steps[mode] = step
    timings = time_interleaved(steps, warmup, repeats)
    return dict(result, preset=preset, batch=batch, block=block, threads=torch.get_num_threads(), step=timings,
                first_step_s=first_step_s, tokens_per_s={m: batch * block / t["median"] for m, t in timings.items()})


def run_throughput(cfg):
    """Section 5: tokens/s of nanoGPT's CPU configuration (cpu-char, B=12, T=64), eager vs torch.compile."""
    kwargs = dict(use_compile=not cfg.quick, threads=cfg.threads, warmup=max(cfg.warmup, 3), repeats=cfg.repeats,
                  seed=cfg.seed)
    if cfg.quick:  # a smoke test: no compile (it takes minutes), and no second start of torch in a new process
        r = run_inline("minigpt.bench.throughput:throughput_job", kwargs)
    else:
        r = run_isolated("minigpt.bench.throughput:throughput_job", kwargs, cfg.timeout)
    rows = []
    for mode in ("eager", "torch.compile"):
        t = r.get("step", {}).get(mode)
        if t is None:
            why = r.get("compile_error") or r.get("error") or "not run with --quick"
            rows.append([mode, f"not measured: {why}", None, None, None])
            continue
        rows.append([mode, ms(t["median"]), spread_ms(t), f"{r['tokens_per_s'][mode]:,.0f}",
                     f"{r['first_step_s'][mode]:.1f}"])
    steps = r.get("step", {})
    speedup = steps["eager"]["median"] / steps["torch.compile"]["median"] if len(steps) == 2 else None
    notes = ["preset cpu-char (4 layers, 4 heads, 128 wide, vocab 256), batch 12, block 64, dropout 0: nanoGPT's "
             "documented CPU recipe; full training, steps as in section 1 (minigpt.trainer's AdamW and clipping); "
             "eager and compiled copies of the same model in one subprocess, timed round-robin.",
             "first step: with torch.compile it includes tracing and C++ compilation, with inductor's on-disk cache "
             "off (a first run's cost); it is not in the median.",
             f"torch.compile speed-up: {speedup:.2f}x" if speedup else "torch.compile speed-up: not measured"]
    headers = ["mode", "step ms", "IQR ms", "tokens/s", "first step s"]
    return make_section("MiniGPT training throughput (nanoGPT's CPU configuration)",
                        [dict(headers=headers, rows=rows)], notes=notes, results=[r])
