"""Which modules of a model a LoRA adapter (or NF4 quantisation) applies to, chosen by name.

The rule is PEFT's: a target string matches a module whose qualified name equals it or ends with
"." + target, so "c_attn" matches "transformer.h.0.attn.c_attn" in every block. The special target
"all-linear" means every linear layer except the output head: PEFT leaves the head out because it
maps to the vocabulary (and for GPT-2 it is tied to the token embedding).
"""

import torch.nn as nn

ALL_LINEAR = "all-linear"


def _output_head_name(model):
    """Name of the output head: the module `get_output_embeddings()` returns (as PEFT uses), else "lm_head"."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    for name, module in model.named_modules():
        if (head is not None and module is head) or (head is None and name.split(".")[-1] == "lm_head"):
            return name
    return None


def name_matches(name, target):
    """PEFT's suffix rule: `name` equals `target` or ends with "." + target."""
    return name == target or name.endswith("." + target)


def parse_targets(targets):
    """Targets as given by a user -> a list of names, or ["all-linear"].

    Accepts "all-linear", a comma-separated string ("c_attn, c_proj"), or a sequence of names; the one
    parser every entry point (apply_lora, quantize_model, the fine-tune CLI) goes through.

    Raises:
        ValueError: no names, or an entry that is not a non-empty string.
    """
    if isinstance(targets, str):
        targets = [targets] if targets == ALL_LINEAR else [t.strip() for t in targets.split(",") if t.strip()]
    elif isinstance(targets, (list, tuple)):
        targets = list(targets)
    else:
        raise ValueError(f"targets={targets!r}: give module names as a list or a comma-separated string, or 'all-linear'")
    if not targets or not all(isinstance(t, str) and t.strip() for t in targets):
        raise ValueError(f"targets={targets!r}: give one or more module names (e.g. ['c_attn']) or 'all-linear'")
    if ALL_LINEAR in targets and targets != [ALL_LINEAR]:
        raise ValueError(f"targets={targets!r}: 'all-linear' cannot be combined with other names")
    return targets


def resolve_targets(model, targets, types=(nn.Linear,)):
    """Return the sorted-by-position list of (name, module) pairs that `targets` selects.

    Args:
        model: any nn.Module.
        targets: a non-empty sequence of module-name suffixes, or the string "all-linear".
        types: module classes that may be targeted; for "all-linear" the classes that are collected.
    Raises:
        ValueError: empty targets, a target that matches nothing (the message lists the candidate
            names), or a target that names a module of another type.
    """
    targets = parse_targets(targets)
    candidates = [(n, m) for n, m in model.named_modules() if isinstance(m, types)]
    candidate_names = [n for n, _ in candidates]
    if targets == [ALL_LINEAR]:
        head = _output_head_name(model)
        chosen = [(n, m) for n, m in candidates if n != head]
        if not chosen:
            raise ValueError(f"targets='all-linear' found no {_type_names(types)} layer besides the output head")
        return chosen
    modules = dict(model.named_modules())
    chosen = {}
    for target in targets:
        hits = [n for n in modules if n and name_matches(n, target)]
        if not hits:
            raise ValueError(f"target {target!r} matches no module; {_type_names(types)} layers are: {_short(candidate_names)}")
        for n in hits:
            if not isinstance(modules[n], types):
                raise ValueError(f"target {target!r} matches {n!r}, a {type(modules[n]).__name__}; only "
                                 f"{_type_names(types)} layers can be targeted: {_short(candidate_names)}")
            chosen[n] = modules[n]
    order = {n: i for i, n in enumerate(modules)}
    return sorted(chosen.items(), key=lambda item: order[item[0]])


def set_module(model, name, new):
    """Replace the submodule at dotted `name` by `new` (setattr on its parent)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _type_names(types):
    return "/".join(t.__name__ for t in types)


def _short(names, limit=12):
    shown = names[:limit]
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return f"{shown}{more}"
