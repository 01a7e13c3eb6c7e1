"""Worked solution of notebooks/exercises/inject.py: LoRA layers in place of a model's linear layers (LoRA §4.2)."""

import torch.nn as nn


def _matches(name, target):
    return name == target or name.endswith("." + target)


def inject_lora(model, targets, make_layer):
    targets = [targets] if isinstance(targets, str) else list(targets)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"targets={targets!r}: give one or more module names, e.g. ['c_attn']")
    chosen = [(name, m) for name, m in model.named_modules()
              if isinstance(m, nn.Linear) and any(_matches(name, t) for t in targets)]
    for t in targets:
        if not any(_matches(name, t) for name, _ in chosen):
            linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
            raise ValueError(f"target {t!r} matches no nn.Linear of the model; its linear layers are {linears}")
    new = [(name, linear, make_layer(linear)) for name, linear in chosen]  # every layer built before any swap
    for name, _, layer in new:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
    for p in model.parameters():
        p.requires_grad_(False)
    replaced = {id(p) for _, linear, _ in new for p in linear.parameters()}
    for _, _, layer in new:  # what a new layer holds beyond the layer it wraps is the adapter: it trains
        for p in layer.parameters():
            if id(p) not in replaced:
                p.requires_grad_(True)
    return {name: linear for name, linear, _ in new}
