"""The optimizer and its schedule: AdamW over the trainable parameters, warm-up then cosine decay.

Kept apart from the training loop so a notebook or a benchmark can build the same optimizer and
learning rate as `minigpt.trainer.train` without running it. `cfg` is a TrainConfig (or anything with
its fields: lr, min_lr, warmup_steps, lr_decay_steps, steps, weight_decay, beta1, beta2).
"""

import math

import torch


def lr_at(step, cfg):
    """Learning rate of optimizer step `step` (0-based): linear warm-up, then cosine decay to min_lr.

        step < W:    lr * (step + 1) / (W + 1)
        step >= D:   min_lr
        otherwise:   min_lr + 0.5 * (1 + cos(pi * (step - W) / (D - W))) * (lr - min_lr)

    with W = warmup_steps and D = lr_decay_steps (or steps). Warm-up then cosine as in GPT-3
    (Brown et al., 2020, appendix B.1), the cosine from SGDR (Loshchilov & Hutter, 2017); the formula is
    nanoGPT's get_lr. Step W gets exactly lr, step (W + D) / 2 gets (lr + min_lr) / 2.
    """
    warmup, decay = cfg.warmup_steps, cfg.lr_decay_steps or cfg.steps
    if step < warmup:
        return cfg.lr * (step + 1) / (warmup + 1)
    if step >= decay:
        return cfg.min_lr
    ratio = (step - warmup) / (decay - warmup)  # 0 -> 1
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


def configure_optimizer(model, cfg, param_groups=None, device="cpu"):
    """AdamW over the parameters with requires_grad: weight decay on matrices (dim >= 2: Linear weights,
    embeddings), none on biases and LayerNorm gains. Or over caller-given `param_groups` (e.g. LoRA+'s
    larger lr for B) whose "lr" and "weight_decay" default to cfg's. Every group keeps its "base_lr";
    the schedule sets lr = base_lr * lr_at(step) / cfg.lr."""
    if param_groups is None:
        params = [p for p in model.parameters() if p.requires_grad]
        param_groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    groups = [dict(g, params=list(g["params"])) for g in param_groups]  # AdamW skips params without grads
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("the model has no parameter with requires_grad=True: nothing to train")
    for g in groups:
        g["base_lr"] = g.setdefault("lr", cfg.lr)
    # one fused kernel for all tensors: on CPU about 10x faster than the foreach default for small models
    fused = torch.device(device).type in ("cpu", "cuda") or None
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay,
                             fused=fused)
