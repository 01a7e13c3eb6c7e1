"""Bug in quantize_model and merge_and_unload: quantising keeps each layer's original float weight W₁₆ beside
its 4-bit codes, and the merge after QLoRA training adds ΔW to W₁₆ instead of to dequant(W₄), the weight
the adapter was trained against (QLoRA §3)."""

import torch
import torch.nn as nn

import lora


def quantize_model(model, *args, **kwargs):
    originals = {name: m.weight.detach().clone() for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    result = lora.quantize_model(model, *args, **kwargs)
    for name, module in model.named_modules():
        if isinstance(module, lora.LinearNF4) and name in originals:
            module.w16 = originals[name]  # "kept for an exact merge later"
    return result


def merge_and_unload(model):
    for name, layer in list(lora.lora_layers(model)):
        w16 = getattr(layer.base, "w16", None)
        if w16 is None:
            continue
        merged = nn.Linear(layer.in_features, layer.out_features, bias=layer.base.bias is not None)
        with torch.no_grad():
            merged.weight.copy_(w16 + layer.delta_weight())
            if layer.base.bias is not None:
                merged.bias.copy_(layer.base.bias)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, merged.requires_grad_(False))
    if any(True for _ in lora.lora_layers(model)):
        return lora.merge_and_unload(model)
    if hasattr(model, "lora_configs"):
        del model.lora_configs
    return model
