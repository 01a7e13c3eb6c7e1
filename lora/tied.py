"""Tied weights: modules that share one weight tensor, such as GPT-2's lm_head and transformer.wte.

GPT-2 uses the token embedding E (V, C) as its output head too (logits = h Eᵀ; Press & Wolf, 2017).
Merging a LoRA update into a shared tensor changes every module that shares it: merging ΔW of a LoRA
on lm_head into E also changes the embedding lookup, and the merged model no longer computes what the
unmerged one did. These functions find such sharing, so a merge can refuse or untie first.

Sharing is found by identity of the Parameter, or by the same storage (two Parameters viewing one
buffer), never by names.
"""

import torch.nn as nn


def _storage_key(tensor):
    """An id for the memory behind `tensor`: its storage's address, or the object id on the meta device."""
    if tensor.device.type == "meta":
        return ("id", id(tensor))
    return ("ptr", tensor.device, tensor.untyped_storage().data_ptr())


def tied_weight_groups(model, attr="weight"):
    """Groups of module names whose `attr` tensor is shared, each group sorted, groups in model order.

    Returns:
        [[name, name, ...], ...], only groups of two or more (GPT-2: [["lm_head", "transformer.wte"]]).
    """
    groups = {}
    for name, module in model.named_modules(remove_duplicate=False):
        tensor = getattr(module, attr, None) if name else None
        if isinstance(tensor, nn.Parameter) or (tensor is not None and hasattr(tensor, "untyped_storage")):
            key = _storage_key(tensor)
            if name not in groups.setdefault(key, []):
                groups[key].append(name)
    return [sorted(names) for names in groups.values() if len(names) > 1]


def tied_with(model, name, attr="weight"):
    """The other modules whose `attr` shares storage with module `name`'s (empty if none).

    Raises:
        ValueError: no module `name`, or it has no tensor `attr`.
    """
    modules = dict(model.named_modules(remove_duplicate=False))
    if name not in modules or getattr(modules[name], attr, None) is None:
        raise ValueError(f"{name!r} is not a module with a {attr!r} tensor")
    for group in tied_weight_groups(model, attr):
        if name in group:
            return [n for n in group if n != name]
    return []


def untie_weight(model, name, attr="weight"):
    """Give module `name` its own copy of its `attr` Parameter (same values, same requires_grad).

    Afterwards an in-place change to it (a merge) no longer reaches the modules it shared with.
    Returns:
        the names it was tied to (empty if it was not tied; nothing is copied then).
    """
    others = tied_with(model, name, attr)
    if others:
        module = model.get_submodule(name)
        old = getattr(module, attr)
        setattr(module, attr, nn.Parameter(old.detach().clone(), requires_grad=old.requires_grad))
    return others
