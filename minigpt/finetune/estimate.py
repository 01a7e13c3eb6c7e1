"""What a fine-tuning run is about to do and how long it should take, said before the work starts.

The expected time comes from minigpt.budget's cost model, calibrated on this machine:

    1. FLOPs: the run's training steps (forward + backward, minigpt.budget.flops_per_token for its
       method: full, LoRA or QLoRA), its evaluations (forward only, eval_batches batches each at step
       0, every eval_interval steps and at the end) and, for an uncached tiny base, the base's
       pretraining steps (full) and its final evaluation.
    2. A rate: a few optimizer steps of the run's model with random weights (the method's real
       trainable parameters) are timed here on the threads the run will use (minigpt.threads), and
       their FLOPs over their time is the FLOP/s this model and method reach on this machine,
       everything else a step does included.
    3. Seconds = FLOPs / rate, for each part with its own model's rate (the base pretrains in full).

To stay short for large bases (GPT-2), the calibration runs the architecture with one and with two
blocks and extrapolates linearly to n_layer blocks, on as few sequences as a fixed budget of work
allows. Start-up, sampling and writing the files (seconds) are not counted. An estimate, not a
promise: other programs on the machine, caches and thermal limits move it.

Shape legend: b calibration batch, T block size, L n_layer.
"""

import dataclasses
import os
import statistics
import time

import torch

from minigpt.budget.costs import TrainPlan, flops_per_token
from minigpt.budget.shapes import from_gpt_config
from minigpt.device import autocast, pick_device
from minigpt.finetune.base_model import SCRATCH, TINY, base_config, is_cached, tiny_base_folder
from minigpt.finetune.config import method_label, recipe_of, validate
from minigpt.finetune.pipeline import prepare_model
from minigpt.model import GPT
from minigpt.threads import fitted_threads, threads_header

CALIBRATION_FLOPS = 5e9  # work per timed step: a fraction of a second on a laptop CPU core
PRETRAIN_EVAL_BATCHES = 10  # the tiny base's single evaluation at the end (minigpt.finetune.base_model.pretrain)


def step_seconds(model, batch_size, block_size, device, repeats=3, warmup=2):
    """Median of `repeats` optimizer steps (forward, backward, AdamW) on random tokens, after `warmup` more.

    The first steps of a process pay one-time costs (allocator growth, kernel set-up), hence the warm-up;
    the median, not the fastest, because the run's steps share the machine as these do.
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
    return statistics.median(times[warmup:])


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


def run_plan(cfg):
    """The TrainPlan of a (validated) fine-tuning config: its method, rank and targets."""
    return TrainPlan("full") if cfg.method == "full" else TrainPlan(cfg.method, cfg.rank, cfg.targets)


def evaluations(steps, eval_interval):
    """How many times minigpt.trainer evaluates: at step 0 and every eval_interval steps and at the end;
    only at the end when eval_interval is 0."""
    if not eval_interval:
        return 1
    return 1 + steps // eval_interval + (steps % eval_interval != 0)


def run_flops(config, plan, steps, batch_size, block_size, evals, eval_batches):
    """(FLOPs of one training step, FLOPs of the whole run): steps x (forward + backward) plus evals x
    eval_batches forward passes, all of batch_size x block_size tokens (minigpt.budget.flops_per_token)."""
    tokens = batch_size * block_size
    flops = flops_per_token(from_gpt_config(config), plan, block_size, tokens)
    return flops["train"] * tokens, tokens * (steps * flops["train"] + evals * eval_batches * flops["forward"])


def estimate(cfg):
    """Seconds expected for the run of `cfg` (validated here): {"pretrain", "finetune", "total", "cached",
    "rate"}: "rate" is the fine-tune's calibrated FLOP/s; "pretrain" is 0 unless the tiny base is not
    cached yet; "cached" is None for other bases.
    """
    cfg = validate(cfg)
    device = pick_device(cfg.device)
    config = base_config(cfg.base, recipe_of(cfg))
    cached, pretrain = None, 0.0
    if cfg.base == TINY:
        recipe = recipe_of(cfg)
        cached = is_cached(tiny_base_folder(recipe, cfg.cache_dir))
        if not cached:
            step, total = run_flops(config, TrainPlan("full"), recipe.steps, recipe.batch_size, config.block_size,
                                    1, PRETRAIN_EVAL_BATCHES)
            with fitted_threads(None):  # the threads pretraining will use (its TrainConfig leaves them to the rule)
                pretrain = total / (step / calibrate(config, recipe.batch_size, config.block_size, device))
    step, total = run_flops(config, run_plan(cfg), cfg.steps, cfg.batch_size, cfg.block_size,
                            evaluations(cfg.steps, cfg.eval_interval), cfg.eval_batches)
    with fitted_threads(cfg.threads):  # the threads minigpt.trainer.train will use for the run
        rate = step / calibrate(config, cfg.batch_size, cfg.block_size, device, lambda m: prepare_model(m, cfg)[0])
    finetune = total / rate
    return {"pretrain": pretrain, "finetune": finetune, "total": pretrain + finetune, "cached": cached, "rate": rate}


def _minutes(seconds):
    """Seconds below 90 s, tenths of a minute below 10 min (whole minutes would round 2.4 min to 2), else minutes."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 600 else f"{seconds / 60:.0f} min"


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
            f"expected about {_minutes(times['total'])} in all (an estimate: FLOPs at the rate of a few timed steps here)")


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
