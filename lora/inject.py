"""Putting LoRA into any model and taking it out again: apply, freeze, merge, unload, disable.

apply_lora swaps each targeted linear layer for a LoRALinear wrapping it, by name (PEFT's suffix
rule, see lora.targets), and freezes everything else. Nothing here knows about a particular model:
LoRA layers are found by type, never by parameter names.

Why the default targets are ("c_attn",): PEFT's default for GPT-2 is c_attn, the fused q/k/v
projection. The paper adapts W_q and W_v separately (LoRA §7.1); adapting c_attn also adapts W_k,
with one A shared by q, k and v (see docs/lora.md).
"""

import contextlib

import torch.nn as nn

from lora.layer import LoRALinear, check_lora_hparams, is_quantized_linear
from lora.params import count_parameters
from lora.targets import ALL_LINEAR, resolve_targets, set_module


def lora_layers(model):
    """Yield (name, LoRALinear) for every LoRA layer of `model`, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def plan_lora(model, rank, alpha, dropout=0.0, targets=("c_attn",), use_rslora=False):
    """Check every argument of apply_lora against `model` and return the [(name, layer)] it would adapt.

    Changes nothing, so callers can validate before they touch the model.
    Raises:
        ValueError: see apply_lora.
    """
    check_lora_hparams(rank, alpha, dropout, use_rslora)
    # quantized linear classes are found by duck type, so this module imports none of them;
    # LoRALinear is a candidate only so that re-targeting an adapted layer is caught below
    types = {nn.Linear} | {type(m) for m in model.modules() if is_quantized_linear(m)}
    types |= {LoRALinear} if any(lora_layers(model)) else set()
    chosen = resolve_targets(model, targets, types=tuple(sorted(types, key=lambda t: t.__name__)))
    modules = dict(model.named_modules())
    for name, module in chosen:
        if isinstance(module, LoRALinear) or isinstance(modules[name.rpartition(".")[0]], LoRALinear):
            raise ValueError(f"{name!r} already has LoRA; call merge_and_unload(model) first, "
                             "or load_adapter(model, directory) to replace its weights")
        if rank > min(module.in_features, module.out_features):
            raise ValueError(f"rank={rank} exceeds min(d_in, d_out) = {min(module.in_features, module.out_features)} "
                             f"of {name!r} ({module.in_features} -> {module.out_features}); ΔW's rank cannot exceed it")
    for name, layer in lora_layers(model):  # one adapter per model: a saved file has one r and one α
        if (layer.rank, layer.alpha, layer.use_rslora) != (rank, alpha, use_rslora):
            raise ValueError(f"{name!r} already has LoRA with rank={layer.rank}, alpha={layer.alpha}, "
                             f"use_rslora={layer.use_rslora}; new layers must use the same values")
    return chosen


def apply_lora(model, rank=8, alpha=16, dropout=0.0, targets=("c_attn",), use_rslora=False):
    """Replace the targeted linear layers of `model` by LoRALinear in place and freeze everything else.

    Args:
        model: any nn.Module.
        rank, alpha, dropout, use_rslora: see LoRALinear.
        targets: module-name suffixes (a module matches if its name equals one or ends with "." + one),
            or "all-linear" for every linear layer except the output head (PEFT's rule).
    Returns:
        the same model, with `model.lora_config` recording the arguments (save_adapter writes it).
    Raises:
        ValueError: a bad hyperparameter; targets empty, matching nothing (the message lists the
            linear layers) or naming a non-linear module; a target that already has LoRA; rank larger
            than min(d_in, d_out) of a target. The model is unchanged when this is raised.
    """
    chosen = plan_lora(model, rank, alpha, dropout, targets, use_rslora)
    wrapped = [(name, LoRALinear(module, rank, alpha, dropout, use_rslora)) for name, module in chosen]
    for name, layer in wrapped:
        set_module(model, name, layer)
    new_targets = _target_list(targets)
    previous = getattr(model, "lora_config", None)
    if previous:
        new_targets = previous["targets"] + [t for t in new_targets if t not in previous["targets"]]
    model.lora_config = dict(rank=rank, alpha=alpha, dropout=dropout, targets=new_targets, use_rslora=use_rslora)
    mark_only_lora_trainable(model)
    return model


def mark_only_lora_trainable(model):
    """Set requires_grad on every lora_A/lora_B and clear it on every other parameter.

    Returns:
        (trainable, total) parameter counts, as count_parameters gives them.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    for _, layer in lora_layers(model):
        layer.lora_A.requires_grad_(True)
        layer.lora_B.requires_grad_(True)
    return count_parameters(model)


def merge_lora(model):
    """merge() every LoRA layer (W ← W + ΔW); if one fails, the ones merged by this call are unmerged."""
    done = []
    try:
        for _, layer in lora_layers(model):
            if not layer.merged:
                layer.merge()
                done.append(layer)
    except ValueError:
        for layer in done:
            layer.unmerge()
        raise
    return model


def unmerge_lora(model):
    """unmerge() every merged LoRA layer (W ← W − ΔW)."""
    for _, layer in lora_layers(model):
        if layer.merged:
            layer.unmerge()
    return model


def merge_and_unload(model):
    """Replace every LoRALinear by a plain nn.Linear holding W + ΔW, and return the model.

    For a quantized base the new layer is a float nn.Linear holding dequant(W) + ΔW: re-quantizing
    would round a second time. Afterwards the state dict has exactly the keys of the model before
    apply_lora and loads into a fresh instance of its class; `model.lora_config` is removed. Every new
    layer is built before any is swapped in, so a failure (non-finite W + ΔW) changes nothing.
    Raises:
        ValueError: the model has no LoRA layer, or some W + ΔW is not finite.
    """
    layers = list(lora_layers(model))
    if not layers:
        raise ValueError(f"{type(model).__name__} has no LoRA layers to merge")
    replacements = [(name, layer.to_linear()) for name, layer in layers]
    for name, linear in replacements:
        set_module(model, name, linear)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model


@contextlib.contextmanager
def disable_lora(model):
    """Context manager: inside it the model computes its base output; the adapters stay in place.

    Raises:
        ValueError: a layer is merged (its ΔW is inside the weight; unmerge_lora(model) first).
    """
    layers = list(lora_layers(model))
    merged = [name for name, layer in layers if layer.merged]
    if merged:
        raise ValueError(f"cannot disable LoRA while {merged[0]!r} is merged; call unmerge_lora(model) first")
    previous = [layer.disabled for _, layer in layers]
    for _, layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for (_, layer), flag in zip(layers, previous, strict=True):
            layer.disabled = flag


def _target_list(targets):
    """targets as a list of names, the way resolve_targets reads them (a str may be comma-separated)."""
    if isinstance(targets, str):
        return [targets] if targets == ALL_LINEAR else [t.strip() for t in targets.split(",") if t.strip()]
    return list(targets)
