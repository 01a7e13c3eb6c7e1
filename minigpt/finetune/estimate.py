"""What a fine-tuning run is about to do and how long it should take, said before the work starts.

The expected time is an estimate from a short calibration on this machine: a few optimizer steps of
the run's model with random weights (the method's real trainable parameters: full, LoRA or NF4 +
LoRA), timed and scaled. To stay short for large bases (GPT-2), the calibration runs the architecture
with one and with two blocks and extrapolates linearly to n_layer blocks, on as few sequences as a
fixed budget of work allows, scaling the time by batch_size / that number.
An estimate, not a promise: other programs on the machine, caches and thermal limits move it.

Shape legend: b calibration batch, T block size, L n_layer.
"""

import dataclasses
import os
import time

import torch

from minigpt.device import autocast, pick_device
from minigpt.finetune.base_model import SCRATCH, TINY, base_config, is_cached, tiny_base_folder
from minigpt.finetune.config import method_label, recipe_of, validate
from minigpt.finetune.pipeline import prepare_model
from minigpt.model import GPT
from minigpt.threads import threads_header

CALIBRATION_FLOPS = 5e9  # work per timed step: a fraction of a second on a laptop CPU core
EVAL_COST = 1 / 3         # an evaluation batch is a forward pass: about a third of a training step


def step_seconds(model, batch_size, block_size, device, repeats=2, warmup=2):
    """Fastest of `repeats` optimizer steps (forward, backward, AdamW) on random tokens, after `warmup` more.

    The first steps of a process pay one-time costs (allocator growth, kernel set-up), hence the warm-up.
    """
    model.to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randint(model.config.vocab_size, (batch_size, block_size), device=device)  # (b, T)
    times = []
    for _ in range(warmup + repeats):
        t0 = time.perf_counter()
        with autocast(device):
            loss = model(x, x)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return min(times[warmup:])


def calibrate(config, batch_size, block_size, device, prepare=None):
    """Estimated seconds per optimizer step of GPT(config) at (batch_size, block_size).

    The model is timed on b <= batch_size sequences, as many as a fixed budget of work allows, and the
    time scaled by batch_size / b. A model too large for one sequence in the budget (GPT-2) is timed
    with one and with two blocks: t(L) = t1 + (L - 1)(t2 - t1). `prepare(model)` turns a fresh model
    into the one trained (LoRA, NF4); by default every weight trains.
    """
    with torch.device("meta"):  # sizes only
        params = GPT(config).num_parameters()
    flops = 6 * params * block_size  # per sequence, forward and backward
    b = int(max(1, min(batch_size, CALIBRATION_FLOPS // flops)))
    if flops <= CALIBRATION_FLOPS:
        return step_seconds(_model(config, prepare), b, block_size, device) * batch_size / b
    t1, t2 = (step_seconds(_model(dataclasses.replace(config, n_layer=n), prepare), b, block_size, device)
              for n in (1, 2))
    return (t1 + (config.n_layer - 1) * max(t2 - t1, 0.0)) * batch_size / b


def _model(config, prepare):
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(config, dropout=0.0))
    return prepare(model) if prepare else model


def estimate(cfg):
    """Seconds expected for the run of `cfg` (validated here): {"pretrain", "finetune", "total", "cached"}.

    "pretrain" is 0 unless the tiny base is not cached yet; "cached" is None for other bases.
    """
    cfg = validate(cfg)
    device = pick_device(cfg.device)
    config = base_config(cfg.base, recipe_of(cfg))
    cached, pretrain = None, 0.0
    if cfg.base == TINY:
        recipe = recipe_of(cfg)
        cached = is_cached(tiny_base_folder(recipe, cfg.cache_dir))
        if not cached:
            pretrain = recipe.steps * calibrate(config, recipe.batch_size, config.block_size, device)
    per_step = calibrate(config, cfg.batch_size, cfg.block_size, device, lambda m: prepare_model(m, cfg)[0])
    evals = cfg.steps // cfg.eval_interval + 2  # step 0, every interval, the end
    finetune = per_step * (cfg.steps + EVAL_COST * evals * cfg.eval_batches)
    return {"pretrain": pretrain, "finetune": finetune, "total": pretrain + finetune, "cached": cached}


def _minutes(seconds):
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def describe_run(cfg, times):
    """One line: what runs, where, on how many threads, and the estimate `times` (from estimate)."""
    cfg = validate(cfg)
    base = {TINY: "the tiny byte-level base", SCRATCH: "random weights (the tiny architecture)"}.get(
        cfg.base, f"the {cfg.base} base")
    if times["cached"] is False:
        base += f" (pretrained first, {cfg.base_steps} steps: about {_minutes(times['pretrain'])})"
    device, text = pick_device(cfg.device), "tiny Shakespeare" if cfg.data is None else os.path.basename(cfg.data)
    return (f"fine-tuning ({method_label(cfg)}) {base} on {text}: {cfg.steps} steps of "
            f"{cfg.batch_size} x {cfg.block_size} tokens on {device.type}, threads: {threads_header(cfg.threads)}; "
            f"expected about {_minutes(times['total'])} in all (an estimate from a few timed steps here)")


def estimate_compare(runs):
    """estimate() summed over `runs`, the [(name, cfg)] of compare_configs; the tiny base is pretrained once."""
    times = [estimate(c) for _, c in runs]
    pretrain, finetune = max(t["pretrain"] for t in times), sum(t["finetune"] for t in times)
    return {"pretrain": pretrain, "finetune": finetune, "total": pretrain + finetune, "runs": [name for name, _ in runs]}


def describe_compare(cfg, times):
    """One line for --compare: the runs, where, on how many threads, and the estimate `times` (estimate_compare)."""
    return (f"comparing {len(times['runs'])} fine-tuning runs ({', '.join(times['runs'])}) of {cfg.steps} steps on "
            f"{pick_device(cfg.device).type}, threads: {threads_header(cfg.threads)}; expected about "
            f"{_minutes(times['total'])} in all (an estimate from a few timed steps here)")
