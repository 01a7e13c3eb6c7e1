"""Putting LoRA into any model: choose layers by name, wrap them, initialise, freeze the rest.

apply_lora swaps each targeted linear layer for a LoRALinear (an nn.Embedding for a LoRAEmbedding)
wrapping it, by name (PEFT's rules, see lora.targets: suffixes, regexes, exclude_modules,
layers_to_transform, per-layer rank_pattern / alpha_pattern), and freezes everything else; called
again with another adapter_name it adds a second adapter to the same or other layers (lora.adapters
switches between them). Nothing here knows about a particular model. Taking LoRA out again (merge,
unload, disable) is lora.merge; finding the layers is lora.model_layers. Both are re-exported here.

Why the default targets are ("c_attn",): PEFT's default for GPT-2 is c_attn, the fused q/k/v
projection. The paper adapts W_q and W_v separately (LoRA §7.1); adapting c_attn also adapts W_k,
with one A shared by q, k and v (see docs/lora.md).
"""

import torch
import torch.nn as nn

from lora.embedding import LoRAEmbedding
from lora.init import check_init, lora_init
from lora.layer import LoRALinear, check_adapter_name, check_lora_hparams, is_quantized_linear, lora_scaling
from lora.merge import disable_lora, merge_and_unload, merge_lora, unmerge_lora
from lora.model_layers import active_adapters, lora_embeddings, lora_layers, mark_only_lora_trainable
from lora.targets import (
    ALL_LINEAR,
    as_regex,
    check_not_a_layer,
    parse_targets,
    resolve_rank_alpha,
    select_layers,
    set_module,
)
from lora.tied import tied_with

__all__ = ["active_adapters", "apply_lora", "disable_lora", "lora_embeddings", "lora_layers",
           "mark_only_lora_trainable", "merge_and_unload", "merge_lora", "plan_layers", "plan_lora", "unmerge_lora"]

# apply_lora's keyword options beyond rank/alpha/dropout/targets/rsLoRA, with their defaults
OPTIONS = dict(use_dora=False, init="default", exclude=None, layers_to_transform=None, layers_pattern=None,
               rank_pattern=None, alpha_pattern=None)


def _is_all_linear(targets):
    return targets == ALL_LINEAR or (isinstance(targets, (list, tuple)) and list(targets) == [ALL_LINEAR])


def _check_layer(name, module, adapter_name, r, options):
    """Raise ValueError if `module` at `name` cannot take adapter `adapter_name` of rank r."""
    if isinstance(module, (LoRALinear, LoRAEmbedding)) and (
            adapter_name in getattr(module, "adapters", {}) or getattr(module, "adapter_name", None) == adapter_name):
        raise ValueError(f"{name!r} already has LoRA adapter {adapter_name!r}; call merge_and_unload(model) first, "
                         "load_adapter(model, directory) to replace its weights, or pick another adapter_name")
    if isinstance(module, LoRAEmbedding):
        raise ValueError(f"{name!r} already has the LoRA adapter {module.adapter_name!r}; an embedding holds one adapter")
    if isinstance(module, LoRALinear) and module.merged:
        raise ValueError(f"{name!r} is merged; call unmerge_lora(model) before adding adapters")
    if isinstance(module, nn.Embedding):
        if options["use_dora"] or check_init(options["init"])[0] == "pissa":
            raise ValueError(f"{name!r} is an embedding: use_dora and PiSSA init are implemented for linear layers only")
        d_in, d_out = module.num_embeddings, module.embedding_dim
    else:
        d_in, d_out = module.in_features, module.out_features
        if check_init(options["init"])[0] == "pissa" and is_quantized_linear(getattr(module, "base", module)):
            raise ValueError(f"{name!r} is quantized: PiSSA needs the float weight. Apply LoRA with init='pissa' to the "
                             "float model, then quantize each residual base (layer.base = LinearNF4.from_linear("
                             "layer.base)): that is QPiSSA")
    if r > min(d_in, d_out):
        raise ValueError(f"rank={r} exceeds min(d_in, d_out) = {min(d_in, d_out)} of {name!r} ({d_in} -> {d_out}); "
                         "ΔW's rank cannot exceed it")


def plan_layers(model, rank, alpha, dropout=0.0, targets=("c_attn",), use_rslora=False, adapter_name="default", **options):
    """Check every argument of apply_lora against `model`; return [(name, layer, r, α)] it would adapt.

    A layer in the list is a linear layer or embedding to wrap, or a LoRALinear that gets one more
    adapter; r and α are the layer's own (rank_pattern, alpha_pattern). Changes nothing.
    Raises:
        ValueError: see apply_lora.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r}; apply_lora takes {sorted(OPTIONS)}")
    options = {**OPTIONS, **options}
    check_lora_hparams(rank, alpha, dropout, use_rslora, options["use_dora"])
    check_init(options["init"])
    check_adapter_name(adapter_name)
    check_not_a_layer(model, (nn.Linear, nn.Embedding, LoRALinear, LoRAEmbedding))  # also before its other checks
    _check_same_settings(model, adapter_name, rank, alpha, use_rslora, targets, options)
    # quantized linear classes are found by duck type, so this module imports none of them
    types = {nn.Linear, LoRALinear} | {type(m) for m in model.modules() if is_quantized_linear(m)}
    if not _is_all_linear(targets):
        types |= {nn.Embedding, LoRAEmbedding}
    chosen = select_layers(model, targets, options["exclude"], options["layers_to_transform"],
                           options["layers_pattern"], types=tuple(sorted(types, key=lambda t: t.__name__)))
    modules = dict(model.named_modules())
    plan = {}
    for name, module in chosen:
        parent = name.rpartition(".")[0]
        if isinstance(modules[parent], (LoRALinear, LoRAEmbedding)):  # a base inside a LoRA layer: adapt that
            name, module = parent, modules[parent]
        plan[name] = module
    settings = resolve_rank_alpha(list(plan), rank, alpha, options["rank_pattern"], options["alpha_pattern"])
    for name, module in plan.items():
        _check_layer(name, module, adapter_name, settings[name][0], options)
    return [(name, module, *settings[name]) for name, module in plan.items()]


def plan_lora(model, rank, alpha, dropout=0.0, targets=("c_attn",), use_rslora=False, adapter_name="default", **options):
    """plan_layers without the per-layer settings: the [(name, layer)] apply_lora would adapt."""
    return [(n, m) for n, m, _, _ in plan_layers(model, rank, alpha, dropout, targets, use_rslora, adapter_name, **options)]


def _check_same_settings(model, adapter_name, rank, alpha, use_rslora, targets, options):
    previous = getattr(model, "lora_configs", {}).get(adapter_name)
    if not previous:
        return
    if (previous["rank"], previous["alpha"], previous["use_rslora"]) != (rank, alpha, use_rslora):
        raise ValueError(f"adapter {adapter_name!r} already has LoRA with rank={previous['rank']}, alpha={previous['alpha']}, "
                         f"use_rslora={previous['use_rslora']}; new layers must use the same values (or another adapter_name)")
    for key, value in options.items():
        if key == "exclude":
            continue
        if previous.get(key, OPTIONS.get(key)) != value:
            raise ValueError(f"adapter {adapter_name!r} already has LoRA with {key}={previous.get(key)!r}; new layers "
                             f"must use the same value (got {value!r}), or another adapter_name")
    if as_regex(previous["targets"]) is not None or as_regex(targets) is not None:
        raise ValueError(f"adapter {adapter_name!r} was chosen by a regular expression; it cannot be extended")


def apply_lora(model, rank=8, alpha=16, dropout=0.0, targets=("c_attn",), use_rslora=False, adapter_name="default",
               **options):
    """Add LoRA adapter `adapter_name` to the targeted layers of `model` in place; freeze the rest.

    A targeted nn.Linear (or quantized linear) is replaced by a LoRALinear wrapping it, an nn.Embedding
    by a LoRAEmbedding; a layer that is a LoRALinear already gets one more adapter. The first adapter of
    a model is active. A new adapter added beside others is inactive and frozen, as in PEFT:
    set_adapter(model, adapter_name) selects it. Calling again with the same name extends that adapter
    to more layers (same settings).

    Args:
        model: any nn.Module.
        rank, alpha, dropout, use_rslora: see LoRAAdapter; rank and alpha are the defaults of the layers
            rank_pattern / alpha_pattern do not name.
        targets: module-name suffixes (a module matches if its name equals one or ends with "." + one),
            "all-linear" for every linear layer except the output head (PEFT's rule), or a regular
            expression (re.Pattern or "re:<pattern>") matching whole module names. May name embeddings.
        adapter_name: letters, digits, "_" and "-"; "default" unless you keep several adapters.
        options (keywords, PEFT's LoraConfig fields under our names):
            use_dora: DoRA (Liu et al., 2024): a trainable magnitude per output row; linear layers only.
            init: "default" (A Kaiming-uniform, B 0), "gaussian" (A ~ N(0, 1/r²)), "pissa" or
                "pissa_niter_<k>" (lora.init): PiSSA writes the residual W0 − s B A into each base
                weight, so the adapter only works on that modified base (save it beside the adapter).
            exclude: names or a regex of modules to leave out (PEFT's exclude_modules).
            layers_to_transform, layers_pattern: keep only these layer indices (lora.targets).
            rank_pattern, alpha_pattern: {name pattern: r} and {name pattern: α} per layer (PEFT's).
    Returns:
        the same model; `model.lora_configs[adapter_name]` records the arguments (save_adapter writes them).
    Raises:
        ValueError: a bad hyperparameter, option or name; targets empty, a target, exclusion, layer
            index or pattern key matching nothing (the message lists the candidates), or naming an
            unsupported module; a target that already has this adapter or is merged; a rank larger than
            min(d_in, d_out) of a layer; an existing adapter of this name with other settings; PiSSA on
            a quantized or tied weight. The model is unchanged when this is raised.
    """
    plan = plan_layers(model, rank, alpha, dropout, targets, use_rslora, adapter_name, **options)
    options = {**OPTIONS, **options}
    inits = _initial_weights(model, plan, use_rslora, options["init"])  # every SVD before any change
    configs = getattr(model, "lora_configs", {})
    active = not configs or adapter_name in active_adapters(model)
    for name, module, r, a in plan:
        layer = _wrap(model, name, module, r, a, dropout, use_rslora, adapter_name, options["use_dora"])
        if name in inits:
            _set_initial(layer, adapter_name, *inits[name])
        if isinstance(layer, LoRAEmbedding):
            layer.active = active
        elif active:
            layer.set_active(layer.active_adapters + [adapter_name])
    configs[adapter_name] = _record(configs.get(adapter_name), rank, alpha, dropout, targets, use_rslora, options)
    model.lora_configs = configs
    mark_only_lora_trainable(model)
    return model


def _initial_weights(model, plan, use_rslora, init):
    """{name: (A, B, new base weight)} for init "gaussian" or PiSSA, computed for every layer first."""
    if init == "default":
        return {}
    out = {}
    for name, module, r, a in plan:
        if isinstance(module, (nn.Embedding, LoRAEmbedding)):
            continue  # PEFT's embedding starts at A = 0, B ~ N(0, 1) for "gaussian" too
        weight = module.base_weight() if isinstance(module, LoRALinear) else module.weight
        if check_init(init)[0] == "pissa" and tied_with(model, f"{name}.base" if isinstance(module, LoRALinear) else name):
            raise ValueError(f"{name!r}'s weight is shared with another module; PiSSA would write its residual into "
                             f"both. Untie it first (lora.untie_weight(model, {name!r}))")
        out[name] = lora_init(init, weight.detach(), r, lora_scaling(r, a, use_rslora))
    return out


@torch.no_grad()
def _set_initial(layer, adapter_name, A, B, weight):
    """Copy an initialisation into the layer: A, B, the (PiSSA) base weight; DoRA's m then follows PEFT."""
    adapter = layer.adapters[adapter_name]
    adapter.lora_A.copy_(A)
    adapter.lora_B.copy_(B)
    if weight is not layer.base.weight:
        layer.base.weight.copy_(weight)
    if adapter.use_dora:  # m = ‖W_res + s B A‖, as PEFT computes it after PiSSA
        adapter.init_magnitude(layer.base_weight())


def _wrap(model, name, module, rank, alpha, dropout, use_rslora, adapter_name, use_dora):
    """The LoRA layer at `name` holding the new adapter: `module` with one more adapter, or a new wrapper."""
    if isinstance(module, LoRALinear):
        module.add_adapter(adapter_name, rank, alpha, dropout, use_rslora, use_dora)
        return module
    weight = getattr(module, "weight", None)
    tied = tied_with(model, name) if isinstance(weight, torch.Tensor) else []
    if isinstance(module, nn.Embedding):
        layer = LoRAEmbedding(module, rank, alpha, use_rslora)
        layer.adapter_name = adapter_name
    else:
        layer = LoRALinear(module, rank, alpha, dropout, use_rslora, adapter_name, use_dora)
        layer.set_active([])
    if tied:
        layer.mark_tied(tied, weight)
    set_module(model, name, layer)
    return layer


def _record(previous, rank, alpha, dropout, targets, use_rslora, options):
    """The settings model.lora_configs keeps for an adapter (targets joined when it is extended)."""
    new_targets = targets if as_regex(targets) is not None else parse_targets(targets)
    if previous:
        old = previous["targets"]
        new_targets = old + [t for t in new_targets if t not in old]
    return dict(rank=rank, alpha=alpha, dropout=dropout, targets=new_targets, use_rslora=use_rslora, **options)
