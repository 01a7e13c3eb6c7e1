"""Putting LoRA into any model and taking it out again: apply, freeze, merge, unload, disable.

apply_lora swaps each targeted linear layer for a LoRALinear wrapping it, by name (PEFT's suffix
rule, see lora.targets), and freezes everything else; called again with another adapter_name it
adds a second adapter to the same or other layers (lora.adapters switches between them). Nothing here
knows about a particular model: LoRA layers are found by type, never by parameter names.

Why the default targets are ("c_attn",): PEFT's default for GPT-2 is c_attn, the fused q/k/v
projection. The paper adapts W_q and W_v separately (LoRA §7.1); adapting c_attn also adapts W_k,
with one A shared by q, k and v (see docs/lora.md).
"""

import contextlib

import torch.nn as nn

from lora.layer import LoRALinear, check_adapter_name, check_lora_hparams, is_quantized_linear
from lora.params import count_parameters
from lora.targets import parse_targets, resolve_targets, set_module


def lora_layers(model):
    """Yield (name, LoRALinear) for every LoRA layer of `model`, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def active_adapters(model):
    """Names of the adapters that are active on some layer of `model`, in the order they were added."""
    configs = getattr(model, "lora_configs", {})
    active = {n for _, layer in lora_layers(model) for n in layer.active_adapters}
    return [n for n in configs if n in active]


def plan_lora(model, rank, alpha, dropout=0.0, targets=("c_attn",), use_rslora=False, adapter_name="default"):
    """Check every argument of apply_lora against `model` and return the [(name, layer)] it would adapt.

    A layer in the list is a linear layer to wrap, or a LoRALinear that gets one more adapter.
    Changes nothing, so callers can validate before they touch the model.
    Raises:
        ValueError: see apply_lora.
    """
    check_lora_hparams(rank, alpha, dropout, use_rslora)
    check_adapter_name(adapter_name)
    previous = getattr(model, "lora_configs", {}).get(adapter_name)
    if previous and (previous["rank"], previous["alpha"], previous["use_rslora"]) != (rank, alpha, use_rslora):
        raise ValueError(f"adapter {adapter_name!r} already has LoRA with rank={previous['rank']}, alpha={previous['alpha']}, "
                         f"use_rslora={previous['use_rslora']}; new layers must use the same values (or another adapter_name)")
    # quantized linear classes are found by duck type, so this module imports none of them
    types = {nn.Linear, LoRALinear} | {type(m) for m in model.modules() if is_quantized_linear(m)}
    chosen = resolve_targets(model, targets, types=tuple(sorted(types, key=lambda t: t.__name__)))
    modules = dict(model.named_modules())
    plan = {}
    for name, module in chosen:
        parent = name.rpartition(".")[0]
        if isinstance(modules[parent], LoRALinear):  # the base inside a LoRA layer: adapt the LoRA layer
            name, module = parent, modules[parent]
        if isinstance(module, LoRALinear) and adapter_name in module.adapters:
            raise ValueError(f"{name!r} already has LoRA adapter {adapter_name!r}; call merge_and_unload(model) first, "
                             "load_adapter(model, directory) to replace its weights, or pick another adapter_name")
        if isinstance(module, LoRALinear) and module.merged:
            raise ValueError(f"{name!r} is merged; call unmerge_lora(model) before adding adapters")
        if rank > min(module.in_features, module.out_features):
            raise ValueError(f"rank={rank} exceeds min(d_in, d_out) = {min(module.in_features, module.out_features)} "
                             f"of {name!r} ({module.in_features} -> {module.out_features}); ΔW's rank cannot exceed it")
        plan[name] = module
    return list(plan.items())


def apply_lora(model, rank=8, alpha=16, dropout=0.0, targets=("c_attn",), use_rslora=False, adapter_name="default"):
    """Add LoRA adapter `adapter_name` to the targeted linear layers of `model` in place; freeze the rest.

    A targeted nn.Linear is replaced by a LoRALinear wrapping it; a layer that is a LoRALinear already
    gets one more adapter. The first adapter of a model is active. A new adapter added beside others is
    inactive and frozen, as in PEFT: set_adapter(model, adapter_name) selects it for training or use.
    Calling again with the same name extends that adapter to more layers (same rank, alpha, rsLoRA).

    Args:
        model: any nn.Module.
        rank, alpha, dropout, use_rslora: see LoRAAdapter.
        targets: module-name suffixes (a module matches if its name equals one or ends with "." + one),
            or "all-linear" for every linear layer except the output head (PEFT's rule).
        adapter_name: letters, digits, "_" and "-"; "default" unless you keep several adapters.
    Returns:
        the same model; `model.lora_configs[adapter_name]` records the arguments (save_adapter writes them).
    Raises:
        ValueError: a bad hyperparameter or name; targets empty, matching nothing (the message lists the
            linear layers) or naming a non-linear module; a target that already has this adapter or is
            merged; rank larger than min(d_in, d_out) of a target; an existing adapter of this name with
            other rank/alpha/rsLoRA. The model is unchanged when this is raised.
    """
    chosen = plan_lora(model, rank, alpha, dropout, targets, use_rslora, adapter_name)
    configs = getattr(model, "lora_configs", {})
    active = not configs or adapter_name in active_adapters(model)
    for name, module in chosen:
        if isinstance(module, LoRALinear):
            module.add_adapter(adapter_name, rank, alpha, dropout, use_rslora)
            layer = module
        else:
            layer = LoRALinear(module, rank, alpha, dropout, use_rslora, adapter_name)
            layer.set_active([])
            set_module(model, name, layer)
        if active:
            layer.set_active(layer.active_adapters + [adapter_name])
    new_targets = parse_targets(targets)
    if adapter_name in configs:
        old = configs[adapter_name]["targets"]
        new_targets = old + [t for t in new_targets if t not in old]
    configs[adapter_name] = dict(rank=rank, alpha=alpha, dropout=dropout, targets=new_targets, use_rslora=use_rslora)
    model.lora_configs = configs
    mark_only_lora_trainable(model)
    return model


def mark_only_lora_trainable(model):
    """Set requires_grad on the lora_A/lora_B of every active adapter and clear it on every other parameter.

    Returns:
        (trainable, total) parameter counts, as count_parameters gives them.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    for _, layer in lora_layers(model):
        for name in layer.active_adapters:
            layer.adapters[name].requires_grad_(True)
    return count_parameters(model)


def merge_lora(model):
    """merge() every LoRA layer (W ← W + ΔW of its active adapters); if one fails, the ones merged by
    this call are unmerged. Switching adapters afterwards raises until unmerge_lora(model)."""
    done = []
    try:
        for _, layer in lora_layers(model):
            if not layer.merged and layer.active_adapters:
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
    """Replace every LoRALinear by a plain nn.Linear holding W + ΔW of its active adapters; return the model.

    For a quantized base the new layer is a float nn.Linear holding dequant(W) + ΔW: re-quantizing
    would round a second time. Afterwards the state dict has exactly the keys of the model before
    apply_lora and loads into a fresh instance of its class; `model.lora_configs` is removed. Every new
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
    if hasattr(model, "lora_configs"):
        del model.lora_configs
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
