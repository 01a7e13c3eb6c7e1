"""Benchmark section 6: generation tokens/s with the KV cache against re-running the context every step.

GPT.generate(use_cache=True) prefills the prompt once and then feeds one token per step;
use_cache=False re-runs the whole window for every token. Both give the same tokens (tests/test_generate.py),
which each job checks again here. Greedy decoding, random weights of the model's shape (speed does not
depend on what the weights say), one subprocess per model with the benchmark's thread count; the two
variants are timed round-robin.

Shape legend: B batch, P prompt length, N new tokens.
"""

import torch

from minigpt.bench.harness import make_section, make_target, ms, pin_threads, run_isolated, spread_ms, time_interleaved
from minigpt.model import GPT, GPTConfig

TARGET_SPEEDUP = 5.0  # cached / uncached tokens/s on the tiny model, 256 new tokens


def _models(quick):
    """(label, preset, prompt length P, new tokens N, batches, repeats divisor, fewest repeats)."""
    if quick:
        return [("test", "test", 4, 32, (1, 2), 1, 2)]
    # GPT-2-shaped uncached generation at batch 8 takes a minute or more per call on a laptop CPU: one
    # timed call after the untimed one that checks the tokens, and 32 new tokens
    return [("tiny", "tiny", 16, 256, (1, 8), 3, 2), ("gpt2-shaped", "gpt2", 16, 32, (1, 8), 30, 1)]


def generation_job(preset, prompt_len, new_tokens, batches, threads, repeats, seed):
    """Subprocess job: {batch: timings of cached and uncached greedy generation, tokens/s, same tokens}."""
    pin_threads(threads)
    torch.manual_seed(seed)
    model = GPT(GPTConfig.from_preset(preset)).eval()
    out = {}
    for batch in batches:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(model.config.vocab_size, (batch, prompt_len), generator=g)  # (B, P)
        fns = {"cached": lambda idx=idx: model.generate(idx, new_tokens, temperature=0, use_cache=True),
               "uncached": lambda idx=idx: model.generate(idx, new_tokens, temperature=0, use_cache=False)}
        same = torch.equal(fns["cached"](), fns["uncached"]())  # also the warm-up call of each
        timings = time_interleaved(fns, 0, repeats, min_seconds=0)
        out[str(batch)] = dict(same_tokens=same, time=timings,
                               tokens_per_s={k: batch * new_tokens / t["median"] for k, t in timings.items()})
    return dict(preset=preset, params=model.num_parameters(), threads=torch.get_num_threads(), batches=out)


def _rows(label, r, batches, new_tokens):
    if r.get("status") != "ok":
        return [[label, b, None, f"failed: {r.get('error')}"] + [None] * 6 for b in batches]
    rows = []
    for b in batches:
        x = r["batches"][str(b)]
        c, u = x["time"]["cached"], x["time"]["uncached"]
        rows.append([label, b, new_tokens, f"{x['tokens_per_s']['cached']:,.0f}", ms(c["median"]), spread_ms(c),
                     f"{x['tokens_per_s']['uncached']:,.0f}", ms(u["median"]), f"{u['median'] / c['median']:.1f}",
                     "yes" if x["same_tokens"] else "NO"])
    return rows


def run_generation(cfg):
    """Section 6: cached vs uncached greedy generation, per model and batch size."""
    rows, targets, results = [], [], []
    for label, preset, prompt_len, new_tokens, batches, divisor, fewest in _models(cfg.quick):
        r = run_isolated("minigpt.bench.generation:generation_job",
                         dict(preset=preset, prompt_len=prompt_len, new_tokens=new_tokens, batches=batches,
                              threads=cfg.threads, repeats=max(fewest, cfg.repeats // divisor), seed=cfg.seed), cfg.timeout)
        results.append(dict(r, label=label, prompt_len=prompt_len, new_tokens=new_tokens))
        rows += _rows(label, r, batches, new_tokens)
        for b in batches:
            ok = r.get("status") == "ok"
            t = r["batches"][str(b)]["time"] if ok else None
            speedup = t["uncached"]["median"] / t["cached"]["median"] if ok else None
            if label in ("tiny", "test"):
                targets.append(make_target(f"{label}, B={b}, {new_tokens} new tokens: cached / uncached tokens/s",
                                           speedup, f">= {TARGET_SPEEDUP:g}",
                                           speedup is not None and speedup >= TARGET_SPEEDUP, digits=1))
    headers = ["model", "batch", "new tokens", "cached tokens/s", "cached ms", "cached IQR ms", "uncached tokens/s",
               "uncached ms", "speedup", "same tokens"]
    shapes = ", ".join(f"{label}: prompt {p}, {n} new tokens" for label, _, p, n, _, _, _ in _models(cfg.quick))
    notes = [f"greedy decoding of random weights ({shapes}); ms is one whole generate() call; tokens/s = batch x new "
             "tokens / that time. Past block_size both variants follow the same window rule (minigpt.kv_cache).",
             "Hugging Face's cached generate on the same GPT-2-shaped weights: tests/fixtures/hf_generate_speed.py "
             "(needs transformers; figures in docs/results.md)."]
    return make_section("Generation: KV cache vs re-running the context", [dict(headers=headers, rows=rows)],
                        targets, notes, results)
