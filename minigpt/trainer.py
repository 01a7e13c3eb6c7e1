"""Training loop for MiniGPT (and any model whose forward(idx, targets) returns (logits, loss)).

The command line is minigpt/train.py (`python -m minigpt.train`); this module is what it, the
fine-tune, the notebooks and the tests call.

AdamW over the parameters that require grad (weight decay on matrices only), linear warm-up then cosine
decay, gradient clipping and accumulation, evaluation on fixed validation batches, bf16 autocast on
CUDA, optional torch.compile and activation checkpointing, checkpoints that resume exactly, JSON lines.

Batches: every step draws one global batch of B * k windows from a generator seeded with cfg.seed; each
of the W processes keeps its contiguous share and splits it into k micro-batches. The gradient is the
mean over the same global batch for any W or k, and a run is reproducible on CPU.
Shape legend: B batch_size (global micro-batch), k grad_accum_steps, W processes, T block_size.
"""

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field, fields, replace

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from lora.checks import check_bool, check_choice, check_float, check_int
from minigpt.checkpoint import capture_rng, check_plain, checkpoint_path, load_checkpoint, rank_world, save_checkpoint
from minigpt.cli import check_writable
from minigpt.data import get_batch
from minigpt.device import DEVICES, autocast, pick_device, ru_maxrss_bytes
from minigpt.evaluate import estimate_loss
from minigpt.metrics_log import trim_metrics_file
from minigpt.optim import configure_optimizer, lr_at
from minigpt.threads import fitted_threads

# fields that may change when a run is resumed without changing its losses
RESUME_FREE_FIELDS = ("steps", "resume", "out", "checkpoint_interval", "metrics_path", "progress", "progress_desc",
                      "eval_interval", "eval_batches", "compile", "device", "gradient_checkpointing", "threads")
OPTIONAL_SIZES = ("block_size", "lr_decay_steps", "threads")  # positive integers, or None for the default
MAX_SEED = 2**63 - 1  # torch.manual_seed(seed + rank) must stay a 64-bit seed
POSITIVE = ("batch_size", "grad_accum_steps", "eval_batches", *OPTIONAL_SIZES)  # the other int fields may be 0


def check_seed(name, seed):
    """seed must be an integer in [0, MAX_SEED]; returns it."""
    if check_int(name, seed, least=0) > MAX_SEED:
        raise ValueError(f"{name}={seed}: must be at most 2**63 - 1 (torch's seeds are 64-bit, and each process adds "
                         "its rank)")
    return int(seed)


@dataclass
class TrainConfig:
    # defaults: nanoGPT's config/train_shakespeare_char.py with its README's CPU overrides; the names
    # speak the project's vocabulary (nanoGPT's max_iters, eval_iters, warmup_iters are steps, eval_batches, warmup_steps)
    steps: int = 2000                  # optimizer steps in all; a resumed run continues up to this
    batch_size: int = 12               # sequences per micro-step, summed over all processes
    block_size: int | None = None      # tokens per sequence; None = the model's block_size
    grad_accum_steps: int = 1          # micro-batches whose gradients add up to one optimizer step
    lr: float = 1e-3                   # peak learning rate, reached at the end of warm-up
    min_lr: float = 1e-4               # floor of the cosine decay
    warmup_steps: int = 100            # linear warm-up steps
    lr_decay_steps: int | None = None  # step where the cosine reaches min_lr; None = steps
    weight_decay: float = 0.1          # AdamW's decoupled decay, on matrices (dim >= 2) only
    beta1: float = 0.9
    beta2: float = 0.99                # nanoGPT's choice for few tokens per step (GPT-3 used 0.95)
    grad_clip: float = 1.0             # max global gradient norm; 0 turns clipping off
    eval_interval: int = 250           # evaluate at step 0, every this many steps and at the end; 0 = end only
    eval_batches: int = 20             # validation batches per evaluation
    seed: int = 1337                   # batches, eval batches, dropout (seed + rank)
    device: str = "auto"               # see minigpt.device.pick_device
    compile: bool = False              # torch.compile the model
    gradient_checkpointing: bool = False  # recompute block activations in backward: less memory, more time
    progress: bool = True              # tqdm bar on rank 0
    progress_desc: str = "training"    # the bar's label, e.g. "fine-tuning (lora r=8)"
    out: str | None = None             # folder of ckpt.pt; None = no checkpoint
    checkpoint_interval: int = 0       # also checkpoint every this many steps; 0 = only at the end
    trainable_only: bool = False       # checkpoint only the parameters with requires_grad (LoRA)
    resume: bool = False               # continue from out/ckpt.pt when it exists
    metrics_path: str | None = None    # JSON lines, one per step
    threads: int | None = None         # torch threads while training; None = one per free core (minigpt.threads)

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type is int or f.name in OPTIONAL_SIZES and value is not None:
                check_int(f"TrainConfig.{f.name}", value, least=int(f.name in POSITIVE))
            elif f.type is bool:
                check_bool(f"TrainConfig.{f.name}", value)
        # finite numbers only: lr=inf or a NaN beta would train on and write non-finite weights
        check_float("TrainConfig.lr", self.lr)
        check_float("TrainConfig.min_lr", self.min_lr, 0.0, self.lr, low_open=False, high_open=False)
        for name in ("grad_clip", "weight_decay"):
            check_float(f"TrainConfig.{name}", getattr(self, name), low_open=False)
        for name in ("beta1", "beta2"):
            check_float(f"TrainConfig.{name}", getattr(self, name), 0.0, 1.0, low_open=False)
        for name in ("out", "metrics_path"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), (str, os.PathLike)):
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: must be None or a path")
        check_choice("TrainConfig.device", self.device, DEVICES)
        check_seed("TrainConfig.seed", self.seed)


@dataclass
class TrainResult:
    train_losses: list = field(default_factory=list)  # mean loss over the global batch, one per step
    val_losses: list = field(default_factory=list)    # (step, mean val loss) per evaluation
    final_val_loss: float | None = None
    tokens_seen: int = 0                 # training tokens of the whole run, all processes, resumed part included
    wall_time: float = 0.0               # seconds spent in this call
    tokens_per_sec: float = 0.0          # this call's training tokens / time in optimizer steps (no evals, no I/O)
    step_time_ms: float = 0.0            # mean duration of one optimizer step in this call
    peak_memory_bytes: int | None = None  # CUDA max_memory_allocated; CPU: the process's peak RSS
    optimizer_state_bytes: int = 0       # every tensor in the optimizer's state
    checkpoint_path: str | None = None
    threads: str | None = None           # the thread choice, in words (minigpt.threads.ThreadChoice.describe)


def _resolve(cfg, model, world):
    """cfg with block_size and lr_decay_steps filled in, after the checks that need the model."""
    model_block = getattr(getattr(model, "config", None), "block_size", None)
    block = cfg.block_size or model_block
    if block is None:
        raise ValueError("TrainConfig.block_size must be set for a model without .config.block_size")
    if model_block is not None and block > model_block:
        raise ValueError(f"TrainConfig.block_size={block} exceeds the model's block_size {model_block}")
    if cfg.batch_size % world:
        raise ValueError(f"TrainConfig.batch_size={cfg.batch_size} is not divisible by the {world} processes")
    if cfg.out is not None:  # before the first step, not at the first checkpoint
        check_writable("TrainConfig.out", cfg.out, folder=not os.fspath(cfg.out).endswith(".pt"))
    if cfg.metrics_path is not None:
        check_writable("TrainConfig.metrics_path", cfg.metrics_path, folder=False)
    return replace(cfg, block_size=block, lr_decay_steps=cfg.lr_decay_steps or cfg.steps)


class NonFiniteLossError(ValueError):
    """The loss or the gradient norm of a step is NaN or inf; training stopped before that step's update."""


def _optimizer_step(fwd, optimizer, data, generator, cfg, device, step=0, vocab_size=None):
    """One optimizer step on a fresh global batch; returns its mean loss over all processes.

    Raises:
        NonFiniteLossError: the loss (or, with clipping, the gradient norm) is not finite; the
            parameters are left as they were before this step.
    """
    (rank, world), k = rank_world(), cfg.grad_accum_steps
    x, y = get_batch(data, cfg.batch_size * k, cfg.block_size, generator=generator, device=device,
                     vocab_size=vocab_size)  # (B*k, T)
    share = x.size(0) // world  # this process's contiguous slice of the global batch
    x, y = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]  # (B*k/W, T)
    total = torch.zeros((), device=device)
    for i, (xb, yb) in enumerate(zip(x.chunk(k), y.chunk(k), strict=True)):  # k x (B/W, T)
        # DDP averages gradients over processes; skip that all-reduce on all but the last micro-step
        with fwd.no_sync() if world > 1 and i < k - 1 else contextlib.nullcontext():
            with autocast(device):
                _, loss = fwd(xb, yb)
            (loss / k).backward()  # gradients add up: the mean over all k micro-batches
        total += loss.detach() / k
    if world > 1:
        dist.all_reduce(total)  # a SUM: gloo has no AVG; every process then sees the same value
        total /= world
    loss = total.item()  # the one host sync of a step
    _check_finite("loss", loss, step, optimizer, cfg)
    if cfg.grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], cfg.grad_clip)
        _check_finite("gradient norm", norm.item(), step, optimizer, cfg)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def _check_finite(what, value, step, optimizer, cfg):
    if not math.isfinite(value):
        optimizer.zero_grad(set_to_none=True)
        kept = f"the last checkpoint in {cfg.out} is the last good one" if cfg.out else "no checkpoint written"
        raise NonFiniteLossError(f"optimizer step {step + 1}: the {what} is {value}; training stopped before updating "
                                 f"the weights ({kept}). Try a lower lr (now {cfg.lr}) or check the data")


class _Run:
    """What the steps of one train() call share: device, optimizer, batch generator, history, outputs."""

    def __init__(self, model, cfg, param_groups, callback, extra):
        self.t_start, self.step_time, self.model, self.cfg, self.extra = time.perf_counter(), 0.0, model, cfg, extra
        rank, world = rank_world()
        self.device = pick_device(cfg.device)
        if self.device.type == "cuda" and world > 1:
            self.device = torch.device("cuda", torch.cuda.current_device())  # the launcher set it from LOCAL_RANK
        model.to(self.device)
        if cfg.gradient_checkpointing:
            if not hasattr(model, "set_gradient_checkpointing"):
                raise ValueError(f"gradient_checkpointing=True but {type(model).__name__} cannot checkpoint")
            model.set_gradient_checkpointing(True)
        self.optimizer = configure_optimizer(model, cfg, param_groups, self.device)
        check_plain(extra or {}, "extra")  # fail now rather than at the first checkpoint
        self.generator = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed + rank)  # dropout: reproducible, and different on each process
        self.history, self.start = {"train_losses": [], "val_losses": [], "tokens_seen": 0}, 0  # or the checkpoint's
        if cfg.resume and cfg.out and os.path.isfile(checkpoint_path(cfg.out)):
            ckpt = load_checkpoint(cfg.out, model, self.optimizer, train_config=cfg, free_fields=RESUME_FREE_FIELDS,
                                   generator=self.generator, rank=rank, world_size=world)
            self.history, self.start = ckpt["history"], ckpt["step"]
        # evaluation runs the compiled model without DDP: no gradients, nothing to synchronise
        self.compiled = self.fwd = torch.compile(model) if cfg.compile else model
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.fwd = DistributedDataParallel(self.compiled, device_ids=ids)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)  # get_batch checks the ids
        self.was_training = model.training
        model.train()
        self.bar = tqdm(total=cfg.steps, initial=self.start, disable=not (cfg.progress and rank == 0), unit="step",
                        desc=cfg.progress_desc)
        self.callback, self.log = (callback if rank == 0 else None), None
        if rank == 0 and cfg.metrics_path:
            os.makedirs(os.path.dirname(os.path.abspath(cfg.metrics_path)), exist_ok=True)
            if self.start:  # the steps logged after the checkpoint by the run that stopped are run again
                trim_metrics_file(cfg.metrics_path, self.start)
            self.log = open(cfg.metrics_path, "a" if self.start else "w", encoding="utf-8")  # appended step by step

    def step(self, step, train_data, val_data):
        """Optimizer step `step` (0-based) with its learning rate, bookkeeping and evaluation."""
        cfg, lr = self.cfg, lr_at(step, self.cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * lr / cfg.lr
        t0 = time.perf_counter()
        loss = _optimizer_step(self.fwd, self.optimizer, train_data, self.generator, cfg, self.device, step,
                               vocab_size=self.vocab_size)
        dt = time.perf_counter() - t0
        self.step_time += dt
        tokens = cfg.batch_size * cfg.grad_accum_steps * cfg.block_size
        self.history["train_losses"].append(loss)
        self.history["tokens_seen"] += tokens
        metrics = {"step": step + 1, "loss": loss, "lr": lr, "tokens_per_sec": tokens / dt}
        if val_data is not None and (step + 1 == cfg.steps or cfg.eval_interval and (step + 1) % cfg.eval_interval == 0):
            self.evaluate(val_data, metrics)
        self.emit(metrics)
        self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens / dt:,.0f}", refresh=False)
        self.bar.update(1)

    def evaluate(self, val_data, metrics):
        metrics["val_loss"] = estimate_loss(self.compiled, val_data, self.cfg)
        self.history["val_losses"].append((metrics["step"], metrics["val_loss"]))
        return metrics

    def emit(self, metrics):
        metrics["elapsed"] = time.perf_counter() - self.t_start
        if self.log is not None:
            self.log.write(json.dumps(metrics) + "\n")
            self.log.flush()
        if self.callback is not None:
            self.callback(metrics["step"], metrics)

    def save(self, step):
        # every process calls this (the RNG states are gathered); only rank 0 writes
        return save_checkpoint(self.cfg.out, self.model, self.optimizer, step=step, train_config=self.cfg,
                               rng=capture_rng(self.generator), history=self.history, extra=self.extra,
                               trainable_only=self.cfg.trainable_only)

    def close(self):
        self.bar.close()
        if self.log is not None:
            self.log.close()
        self.model.train(self.was_training)

    def result(self, path):
        cfg, steps, val = self.cfg, self.cfg.steps - self.start, [tuple(v) for v in self.history["val_losses"]]
        tokens = steps * cfg.batch_size * cfg.grad_accum_steps * cfg.block_size
        return TrainResult(
            train_losses=list(self.history["train_losses"]), val_losses=val, final_val_loss=val[-1][1] if val else None,
            tokens_seen=self.history["tokens_seen"], wall_time=time.perf_counter() - self.t_start,
            tokens_per_sec=tokens / self.step_time if steps > 0 else 0.0,
            step_time_ms=1000 * self.step_time / steps if steps > 0 else 0.0, peak_memory_bytes=_peak_memory(self.device),
            optimizer_state_bytes=sum(t.numel() * t.element_size() for s in self.optimizer.state.values()
                                      for t in s.values() if isinstance(t, torch.Tensor)),
            checkpoint_path=path)


def train(model, train_data, val_data, cfg, param_groups=None, callback=None, extra=None):
    """Train `model` on the token ids `train_data` up to cfg.steps optimizer steps.

    Works in scripts, notebooks, tests and under torchrun (a process group makes it use DistributedDataParallel;
    only rank 0 writes files, shows progress, calls `callback`). Seeds torch's RNG with cfg.seed + rank (dropout).

    Args:
        model: forward(idx, targets) -> (logits, loss); moved to cfg.device, left in its original mode.
        train_data, val_data: (N,) int64 token ids; val_data None skips evaluation.
        cfg: TrainConfig.
        param_groups: AdamW groups to use instead of the decay / no-decay split.
        callback: callback(step, metrics) after every step, with the keys of the JSON lines: step, loss, lr,
            tokens_per_sec, elapsed, and val_loss on evaluation steps (step 0: the initial val_loss only).
        extra: plain dict stored in checkpoints (tokenizer description, LoRA config, ...).
    Returns:
        TrainResult.
    Raises:
        ValueError: bad config or data, or a checkpoint that does not fit (see load_checkpoint).
        NonFiniteLossError: a step's loss or gradient norm is NaN or inf (a ValueError naming the step);
            the weights keep that step's starting values and no checkpoint is written after it.
    """
    cfg = _resolve(cfg, model, rank_world()[1])
    with fitted_threads(cfg.threads) as choice:
        result = _train(model, train_data, val_data, cfg, param_groups, callback, extra)
    result.threads = choice.describe()
    return result


def _train(model, train_data, val_data, cfg, param_groups, callback, extra):
    run = _Run(model, cfg, param_groups, callback, extra)
    try:
        if run.start == 0 and cfg.eval_interval and val_data is not None:
            run.emit(run.evaluate(val_data, {"step": 0}))
        for step in range(run.start, cfg.steps):
            run.step(step, train_data, val_data)
            if cfg.out and cfg.checkpoint_interval and (step + 1) % cfg.checkpoint_interval == 0 \
                    and step + 1 < cfg.steps:  # the last one is written below
                run.save(step + 1)
        path = run.save(max(run.start, cfg.steps)) if cfg.out else None
    finally:
        run.close()
    return run.result(path)


def _peak_memory(device):
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else ru_maxrss_bytes()
