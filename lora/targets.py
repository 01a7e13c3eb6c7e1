"""Which modules of a model a LoRA adapter (or NF4 quantisation) applies to, chosen by name.

The rule is PEFT's: a target name matches a module whose qualified name equals it or ends with
"." + target, so "c_attn" matches "transformer.h.0.attn.c_attn" in every block. The special target
"all-linear" means every linear layer except the output head: PEFT leaves the head out because it
maps to the vocabulary (and for GPT-2 it is tied to the token embedding). A regular expression must
match a module's whole qualified name. PEFT's finer choices are here too: exclude_modules,
layers_to_transform with layers_pattern, and the rank_pattern / alpha_pattern keys.

Targets come in two spellings, each read once where it enters:

    PEFT's (LoraConfig, adapter_config.json)   a list of names, "all-linear", or a str = a regex
    ours (the keyword form, the command line)  "c_attn, c_proj" = names, "re:<pattern>" = a regex

and both become one normal form: a tuple of names, "all-linear", or a compiled re.Pattern
(peft_targets, user_targets). Everything below takes the normal form. Unlike PEFT, every target,
exclusion, layer index and pattern key that selects nothing raises, listing the candidates.
"""

import re

import torch.nn as nn

from lora.checks import check_int_list

ALL_LINEAR = "all-linear"
REGEX_PREFIX = "re:"


def _regex(pattern, field):
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{field}={pattern!r} is not a valid regular expression ({e})") from None


def _names(value, field):
    names = list(dict.fromkeys(value))  # the order given, each name once
    if not names or not all(isinstance(t, str) and t.strip() for t in names):
        raise ValueError(f"{field}={value!r}: give one or more module names (e.g. ['c_attn']) or '{ALL_LINEAR}'")
    if ALL_LINEAR in names:
        if names != [ALL_LINEAR]:
            raise ValueError(f"{field}={value!r}: '{ALL_LINEAR}' cannot be combined with other names")
        return ALL_LINEAR
    return tuple(t.strip() for t in names)


def peft_targets(value, field="target_modules"):
    """PEFT's spelling -> the normal form: names (list, tuple, set), "all-linear", or a str regex.

    Raises:
        ValueError: None, an empty list, a non-string name, or an invalid regex; the message names `field`.
    """
    if isinstance(value, re.Pattern):
        return value
    if isinstance(value, str):
        return ALL_LINEAR if value == ALL_LINEAR else _regex(value, field)
    if isinstance(value, (set, frozenset)):
        value = sorted(value, key=str)
    if isinstance(value, (list, tuple)):
        return _names(value, field)
    raise ValueError(f"{field}={value!r}: give a list of module names, '{ALL_LINEAR}', or a regular expression "
                     "matching whole module names (a str, PEFT's rule)")


def user_targets(value, field="targets"):
    """Our spelling -> the normal form: "a, b" or a list = names, "re:<pattern>" = a regex, "all-linear".

    The normal form itself (a tuple of names, a compiled pattern) passes through unchanged.
    """
    if isinstance(value, str):
        if value.startswith(REGEX_PREFIX):
            return _regex(value[len(REGEX_PREFIX):], field)
        value = [value] if value == ALL_LINEAR else [t.strip() for t in value.split(",") if t.strip()]
    return peft_targets(value, field)


def name_matches(name, target):
    """PEFT's suffix rule: `name` equals `target` or ends with "." + target."""
    return name == target or name.endswith("." + target)


def _output_head_name(model):
    """Name of the output head: the module `get_output_embeddings()` returns (as PEFT uses), else "lm_head"."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    for name, module in model.named_modules():
        if (head is not None and module is head) or (head is None and name.split(".")[-1] == "lm_head"):
            return name
    return None


def check_not_a_layer(model, types):
    """Refuse a model that is itself a targetable layer: it has no parent to be swapped into."""
    if isinstance(model, types):
        raise ValueError(f"the model is itself a {type(model).__name__} layer: layers are replaced inside a model, "
                         "so wrap it first (nn.Sequential(layer)), or wrap the layer directly (LoRALinear(layer, ...), "
                         "LinearNF4.from_linear(layer))")


def _type_names(types):
    return "/".join(t.__name__ for t in types)


def _short(names, limit=12):
    shown = list(names)[:limit]
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return f"{shown}{more}"


def _by_names(model, targets, types):
    candidates = [n for n, m in model.named_modules() if isinstance(m, types)]
    if targets == ALL_LINEAR:
        head = _output_head_name(model)
        chosen = [(n, m) for n, m in model.named_modules() if isinstance(m, types) and n != head]
        if not chosen:
            raise ValueError(f"targets='{ALL_LINEAR}' found no {_type_names(types)} layer besides the output head")
        return chosen
    modules = dict(model.named_modules())
    chosen = set()
    for target in targets:
        hits = [n for n in modules if n and name_matches(n, target)]
        if not hits:
            raise ValueError(f"target {target!r} matches no module; {_type_names(types)} layers are: {_short(candidates)}")
        for n in hits:
            if not isinstance(modules[n], types):
                raise ValueError(f"target {target!r} matches {n!r}, a {type(modules[n]).__name__}; only "
                                 f"{_type_names(types)} layers can be targeted: {_short(candidates)}")
        chosen.update(hits)
    return [(n, m) for n, m in model.named_modules() if n in chosen]  # in model order


def _by_regex(model, regex, types):
    candidates = [n for n, m in model.named_modules() if isinstance(m, types)]
    hits = [(n, m) for n, m in model.named_modules() if n and regex.fullmatch(n)]
    if not hits:
        raise ValueError(f"target regex {regex.pattern!r} matches no module name in full (a str target_modules is a "
                         f"regular expression, PEFT's rule; give a list for names); {_type_names(types)} layers are: "
                         f"{_short(candidates)}")
    for n, m in hits:
        if not isinstance(m, types):
            raise ValueError(f"target regex {regex.pattern!r} matches {n!r}, a {type(m).__name__}; only "
                             f"{_type_names(types)} layers can be targeted: {_short(candidates)}")
    return hits


def _exclude(chosen, exclude):
    names = [n for n, _ in chosen]
    if isinstance(exclude, re.Pattern):
        drop = {n for n in names if exclude.fullmatch(n)}
        if not drop:
            raise ValueError(f"exclude regex {exclude.pattern!r} matches none of the chosen layers: {_short(names)}")
    else:
        drop = set()
        for ex in [exclude] if exclude == ALL_LINEAR else exclude:
            hit = {n for n in names if name_matches(n, ex)}
            if ex == ALL_LINEAR or not hit:
                raise ValueError(f"exclude {ex!r} matches none of the chosen layers: {_short(names)}")
            drop |= hit
    kept = [(n, m) for n, m in chosen if n not in drop]
    if not kept:
        raise ValueError(f"exclude={exclude!r} leaves no layer of {_short(names)}")
    return kept


def layer_index(name, layers_pattern=None):
    """The layer number in `name`, PEFT's rule: the first "<x>.<digits>." (x one of layers_pattern if given)."""
    if not layers_pattern:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
        return int(match["idx"]) if match else None
    for pattern in [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern:
        match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", name)
        if match:
            return int(match["idx"])
    return None


def _keep_layers(chosen, layers_to_transform, layers_pattern):
    wanted = check_int_list("layers_to_transform", layers_to_transform)
    index = {n: layer_index(n, layers_pattern) for n, _ in chosen}
    found = sorted({i for i in index.values() if i is not None})
    if not found:
        raise ValueError(f"layers_pattern={layers_pattern!r} finds no layer index in {_short(list(index))}")
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise ValueError(f"layers_to_transform has {missing}, but the chosen layers have indices {found}")
    return [(n, m) for n, m in chosen if index[n] in set(wanted)]


def select_layers(model, targets, exclude=None, layers_to_transform=None, layers_pattern=None, types=(nn.Linear,)):
    """PEFT's layer choice: targets, minus exclude, restricted to layers_to_transform; [(name, module)] in model order.

    Args:
        targets: the normal form (a tuple of names, "all-linear", or a compiled regex); see the module docstring.
        exclude: None, or names / a compiled regex of modules to leave out; each must remove one.
        layers_to_transform: None, an int or a list of ints: keep only layers with these indices (layer_index).
        layers_pattern: the name (or names) of the layer list, e.g. "h"; only with layers_to_transform.
        types: module classes that may be chosen.
    Raises:
        ValueError: any target, exclusion, layer index or layer pattern that selects nothing (the
            message lists the candidates), a chosen module of another type, or nothing left at the end.
    """
    check_not_a_layer(model, types)
    regex = targets if isinstance(targets, re.Pattern) else None
    if regex is not None and layers_to_transform is not None:
        raise ValueError("layers_to_transform cannot be used with a regular-expression target (PEFT's rule)")
    if layers_pattern and layers_to_transform is None:
        raise ValueError(f"layers_pattern={layers_pattern!r} needs layers_to_transform")
    chosen = _by_regex(model, regex, types) if regex is not None else _by_names(model, targets, types)
    if exclude is not None:
        chosen = _exclude(chosen, exclude)
    if layers_to_transform is not None:
        chosen = _keep_layers(chosen, layers_to_transform, layers_pattern)
    return chosen


def resolve_targets(model, targets, types=(nn.Linear,)):
    """select_layers for targets in our spelling ("c_attn, c_fc", a list, "all-linear", "re:..."): [(name, module)]."""
    return select_layers(model, user_targets(targets), types=types)


def set_module(model, name, new):
    """Replace the submodule at dotted `name` by `new` (setattr on its parent)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def pattern_key(patterns, name):
    r"""The first key of `patterns` matching `name`, PEFT's rule: re.match(rf"(.*\.)?({key})$", name); else None."""
    for key in patterns or {}:
        if re.match(rf"(.*\.)?({key})$", name):
            return key
    return None


def check_pattern_keys(field, patterns, names):
    """Every key of rank_pattern / alpha_pattern (`field`) must match one of the chosen layer `names`."""
    for key in patterns:
        if not any(re.match(rf"(.*\.)?({key})$", n) for n in names):
            raise ValueError(f"{field} key {key!r} matches none of the chosen layers: {_short(list(names))}")
