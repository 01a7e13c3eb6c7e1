"""Counting parameters the way PEFT reports them, and LoRA+ optimizer groups.

A LoRA layer adds r·(d_in + d_out) trainable numbers to a frozen d_out·d_in matrix (LoRA §4.1).
count_parameters counts each tensor once even when it is shared (GPT-2 ties lm_head to wte), and
counts a quantized weight by its logical size, not by the bytes that store it.
"""

from lora.adapter import LoRAAdapter
from lora.checks import check_float


def count_parameters(model):
    """Return (trainable, total) numbers of parameters of `model`.

    A tensor shared by several modules is counted once. A module with a `num_quantized_parameters()`
    method (a quantized linear layer) counts as that many frozen parameters for its weight, in place of
    its integer storage tensors; its floating-point parameters (the bias) are counted as usual.
    """
    seen, trainable, total = set(), 0, 0
    for module in model.modules():
        quantized = callable(getattr(module, "num_quantized_parameters", None))
        if quantized:
            total += int(module.num_quantized_parameters())
        for p in module.parameters(recurse=False):
            if id(p) in seen or (quantized and not p.is_floating_point()):
                continue
            seen.add(id(p))
            total += p.numel()
            trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def trainable_summary(model):
    """PEFT's one-line report, e.g. "trainable params: 294,912 || all params: 124,734,720 || trainable%: 0.2364"."""
    trainable, total = count_parameters(model)
    percent = 100 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {percent:.4f}"


def lora_plus_param_groups(model, lr, ratio=16, weight_decay=0.0):
    """Optimizer parameter groups for LoRA+ (Hayou et al., 2024): B learns `ratio` times faster than A.

    LoRA+'s argument: for wide layers one learning rate is either too small for B or too large for A
    to learn features efficiently, so B gets a larger one. The authors note the best ratio depends on
    the model and the task (and should be >= 1). Any other trainable parameter joins A's group.

    Args:
        model: a model with LoRA layers.
        lr: learning rate of the A matrices, > 0.
        ratio: lr_B / lr_A, > 0; 16 = 2^4 by default, the value commonly used with LoRA+.
        weight_decay: for both groups, >= 0.
    Returns:
        [{"name": "lora_A", "params", "lr", "weight_decay"}, {"name": "lora_B", ...}] for torch.optim.
    Raises:
        ValueError: a bad number, or a model without trainable LoRA parameters.
    """
    check_float("lr", lr)
    check_float("ratio", ratio)
    check_float("weight_decay", weight_decay, low_open=False)
    b_ids = {id(m.lora_B) for m in model.modules() if isinstance(m, LoRAAdapter) and m.lora_B.requires_grad}
    if not b_ids:
        raise ValueError(f"{type(model).__name__} has no trainable LoRA parameters; call apply_lora first")
    group_a, group_b = [], []
    for p in model.parameters():  # parameters() yields a shared tensor once
        if p.requires_grad:
            (group_b if id(p) in b_ids else group_a).append(p)
    return [
        dict(name="lora_A", params=group_a, lr=lr, weight_decay=weight_decay),
        dict(name="lora_B", params=group_b, lr=lr * ratio, weight_decay=weight_decay),
    ]
