"""Which modules of a model a LoRA adapter (or NF4 quantisation) applies to, chosen by name.

The rule is PEFT's: a target string matches a module whose qualified name equals it or ends with
"." + target, so "c_attn" matches "transformer.h.0.attn.c_attn" in every block. The special target
"all-linear" means every linear layer except the output head: PEFT leaves the head out because it
maps to the vocabulary (and for GPT-2 it is tied to the token embedding).

PEFT's finer choices are here too (select_layers, layer_rank_alpha): a regular expression as the
target, exclude_modules, layers_to_transform with layers_pattern, rank_pattern and alpha_pattern.
A regular expression is given as a compiled re.Pattern, or as a string starting with "re:" (for the
command line); a plain string stays a comma-separated list of names. PEFT's config stores a regex as a
bare string (its target_modules is a regex whenever it is a str): from_peft_targets and
to_peft_targets convert. Unlike PEFT, every pattern that selects nothing raises, listing the candidates.
"""

import math
import numbers
import re

import torch.nn as nn

ALL_LINEAR = "all-linear"
REGEX_PREFIX = "re:"


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


def check_not_a_layer(model, types):
    """Refuse a model that is itself a targetable layer: it has no parent to be swapped into."""
    if isinstance(model, types):
        raise ValueError(f"the model is itself a {type(model).__name__} layer: layers are replaced inside a model, "
                         "so wrap it first (nn.Sequential(layer)), or wrap the layer directly (LoRALinear(layer, ...), "
                         "LinearNF4.from_linear(layer))")


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
    check_not_a_layer(model, types)
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


def as_regex(spec):
    """A compiled regex if `spec` is an re.Pattern or a "re:<pattern>" string, else None.

    Raises:
        ValueError: a "re:" string that is not a valid regular expression.
    """
    if isinstance(spec, re.Pattern):
        return spec
    if isinstance(spec, str) and spec.startswith(REGEX_PREFIX):
        try:
            return re.compile(spec[len(REGEX_PREFIX):])
        except re.error as e:
            raise ValueError(f"{spec!r} is not a valid regular expression ({e})") from None
    return None


def from_peft_targets(value):
    """PEFT's target_modules / exclude_modules -> ours: a str other than "all-linear" is a full-match regex."""
    if isinstance(value, str) and value != ALL_LINEAR:
        return as_regex(REGEX_PREFIX + value)
    return value


def to_peft_targets(targets):
    """Ours -> PEFT's target_modules: a regex becomes its bare pattern string, a name list stays a list."""
    regex = as_regex(targets)
    return regex.pattern if regex is not None else parse_targets(targets)


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


def select_layers(model, targets, exclude=None, layers_to_transform=None, layers_pattern=None, types=(nn.Linear,)):
    """PEFT's layer choice: targets, minus exclude, restricted to layers_to_transform; [(name, module)] in model order.

    Args:
        targets: names / "all-linear" as resolve_targets takes them, or a regex (re.Pattern or "re:...")
            that must match a module's whole qualified name (PEFT's rule for a str target_modules).
        exclude: names (suffix rule) or a regex (full match) of modules to leave out; each must remove one.
        layers_to_transform: an int or a list of ints: keep only layers with these indices (layer_index);
            not with a regex target (PEFT's rule). Each index must be found.
        layers_pattern: the name (or names) of the layer list, e.g. "h"; only with layers_to_transform.
        types: module classes that may be chosen.
    Raises:
        ValueError: any target, exclusion, layer index or layer pattern that selects nothing (the
            message lists the candidates), a chosen module of another type, or nothing left at the end.
    """
    regex = as_regex(targets)
    check_not_a_layer(model, types)
    if regex is not None and layers_to_transform is not None:
        raise ValueError("layers_to_transform cannot be used with a regular-expression target (PEFT's rule)")
    if layers_pattern and layers_to_transform is None:
        raise ValueError(f"layers_pattern={layers_pattern!r} needs layers_to_transform")
    chosen = _regex_targets(model, regex, types) if regex is not None else resolve_targets(model, targets, types)
    if exclude is not None:
        chosen = _exclude(chosen, exclude)
    if layers_to_transform is not None:
        chosen = _keep_layers(chosen, layers_to_transform, layers_pattern)
    return chosen


def _regex_targets(model, regex, types):
    candidates = [n for n, m in model.named_modules() if isinstance(m, types)]
    hits = [(n, m) for n, m in model.named_modules() if n and regex.fullmatch(n)]
    if not hits:
        raise ValueError(f"target regex {regex.pattern!r} matches no module name in full; "
                         f"{_type_names(types)} layers are: {_short(candidates)}")
    for n, m in hits:
        if not isinstance(m, types):
            raise ValueError(f"target regex {regex.pattern!r} matches {n!r}, a {type(m).__name__}; only "
                             f"{_type_names(types)} layers can be targeted: {_short(candidates)}")
    return hits


def _exclude(chosen, exclude):
    names = [n for n, _ in chosen]
    regex = as_regex(exclude)
    if regex is not None:
        drop = {n for n in names if regex.fullmatch(n)}
        if not drop:
            raise ValueError(f"exclude regex {regex.pattern!r} matches none of the chosen layers: {_short(names)}")
    else:
        drop = set()
        for ex in parse_targets(exclude):
            hit = {n for n in names if name_matches(n, ex)}
            if ex == ALL_LINEAR or not hit:
                raise ValueError(f"exclude {ex!r} matches none of the chosen layers: {_short(names)}")
            drop |= hit
    kept = [(n, m) for n, m in chosen if n not in drop]
    if not kept:
        raise ValueError(f"exclude={exclude!r} leaves no layer of {_short(names)}")
    return kept


def _keep_layers(chosen, layers_to_transform, layers_pattern):
    wanted = [layers_to_transform] if isinstance(layers_to_transform, numbers.Integral) else layers_to_transform
    if (not isinstance(wanted, (list, tuple)) or not wanted
            or not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) and i >= 0 for i in wanted)):
        raise ValueError(f"layers_to_transform={layers_to_transform!r}: give a layer index or a list of them (>= 0)")
    index = {n: layer_index(n, layers_pattern) for n, _ in chosen}
    found = sorted({i for i in index.values() if i is not None})
    if not found:
        raise ValueError(f"layers_pattern={layers_pattern!r} finds no layer index in {_short(list(index))}")
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise ValueError(f"layers_to_transform has {missing}, but the chosen layers have indices {found}")
    return [(n, m) for n, m in chosen if index[n] in set(wanted)]


def pattern_key(patterns, name):
    r"""The first key of `patterns` matching `name`, PEFT's rule: re.match(rf"(.*\.)?({key})$", name); else None."""
    for key in patterns or {}:
        if re.match(rf"(.*\.)?({key})$", name):
            return key
    return None


def layer_rank_alpha(name, rank, alpha, rank_pattern=None, alpha_pattern=None):
    """(r, α) for module `name`: rank_pattern / alpha_pattern's first matching key overrides rank / alpha (PEFT)."""
    r_key, a_key = pattern_key(rank_pattern, name), pattern_key(alpha_pattern, name)
    return (rank if r_key is None else rank_pattern[r_key]), (alpha if a_key is None else alpha_pattern[a_key])


def resolve_rank_alpha(names, rank, alpha, rank_pattern=None, alpha_pattern=None):
    """{name: (r, α)} for the chosen layer names, after checking every pattern key and value.

    Raises:
        ValueError: a key that is not a valid regex or matches none of `names` (the message lists
            them), a rank that is not a positive integer, or an alpha that is not a positive number.
    """
    for field, patterns in (("rank_pattern", rank_pattern), ("alpha_pattern", alpha_pattern)):
        if patterns is None:
            continue
        if not isinstance(patterns, dict):
            raise ValueError(f"{field}={patterns!r}: give a dict of name pattern -> value")
        for key, value in patterns.items():
            try:
                hit = isinstance(key, str) and any(re.match(rf"(.*\.)?({key})$", n) for n in names)
            except re.error as e:
                raise ValueError(f"{field} key {key!r} is not a valid regular expression ({e})") from None
            if not hit:
                raise ValueError(f"{field} key {key!r} matches none of the chosen layers: {_short(list(names))}")
            ok_rank = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0
            ok_alpha = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0
            if not (ok_rank if field == "rank_pattern" else ok_alpha):
                raise ValueError(f"{field}[{key!r}]={value!r}: must be a positive {'integer' if field == 'rank_pattern' else 'number'}")
    return {n: layer_rank_alpha(n, rank, alpha, rank_pattern, alpha_pattern) for n in names}
