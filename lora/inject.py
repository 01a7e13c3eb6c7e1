"""Putting LoRA into any model: choose layers by name, wrap them, initialise, freeze the rest.

apply_lora(model, config) swaps each targeted linear layer for a LoRALinear (an nn.Embedding for a
LoRAEmbedding) wrapping it, chosen by name with PEFT's rules (lora.targets), adds the adapter to it,
and freezes everything else; called again with another adapter_name it adds a second adapter to the
same or other layers (lora.switching switches between them). plan_lora does every check first, so a
failed call changes nothing. Nothing here knows about a particular model.

Why the default targets are ("c_attn",): PEFT's default for GPT-2 is c_attn, the fused q/k/v
projection. The paper adapts W_q and W_v separately (LoRA §7.1); adapting c_attn also adapts W_k,
with one A shared by q, k and v (see docs/lora.md).
"""

import dataclasses
import re

import torch
import torch.nn as nn

from lora.adapter import check_adapter_name, is_quantized_linear, lora_scaling
from lora.base_layer import LoRALayer
from lora.config import LoraConfig, config_from_keywords
from lora.embedding import LoRAEmbedding
from lora.init import check_init, lora_init
from lora.layer import LoRALinear
from lora.model_layers import active_adapters, mark_only_lora_trainable
from lora.targets import ALL_LINEAR, check_not_a_layer, check_pattern_keys, select_layers, set_module
from lora.tied import tied_with


def _sizes(module):
    """(d_in, d_out) of a linear layer or embedding (V, C), LoRA-wrapped or not."""
    if isinstance(module, (nn.Embedding, LoRAEmbedding)):
        return module.num_embeddings, module.embedding_dim
    return module.in_features, module.out_features


def _check_layer(name, module, adapter_name, rank, config):
    """Raise ValueError if `module` at `name` cannot take adapter `adapter_name` of rank `rank`."""
    if isinstance(module, LoRALayer):
        if adapter_name in module.adapters:
            raise ValueError(f"{name!r} already has LoRA adapter {adapter_name!r}; call merge_and_unload(model) first, "
                             "load_adapter(model, directory) to replace its weights, or pick another adapter_name")
        if module.merged:
            raise ValueError(f"{name!r} is merged; call unmerge_lora(model) before adding adapters")
    pissa = check_init(config.init)[0] == "pissa"
    if isinstance(module, (nn.Embedding, LoRAEmbedding)):
        if config.use_dora or pissa:
            raise ValueError(f"{name!r} is an embedding: use_dora and PiSSA init are implemented for linear layers only")
    elif pissa and is_quantized_linear(getattr(module, "base", module)):
        raise ValueError(f"{name!r} is quantized: PiSSA needs the float weight. Apply LoRA with init='pissa' to the "
                         "float model, then quantize each residual base (layer.base = LinearNF4.from_linear("
                         "layer.base)): that is QPiSSA")
    d_in, d_out = _sizes(module)
    if rank > min(d_in, d_out):
        raise ValueError(f"rank={rank} exceeds min(d_in, d_out) = {min(d_in, d_out)} of {name!r} ({d_in} -> {d_out}); "
                         "ΔW's rank cannot exceed it")


def _check_extension(model, adapter_name, config):
    """A second apply_lora with an existing adapter's name adds layers: every setting but the targets must agree."""
    previous = getattr(model, "lora_configs", {}).get(adapter_name)
    if previous is None:
        return
    for field in dataclasses.fields(LoraConfig):
        if field.name not in ("target_modules", "exclude_modules") and \
                getattr(previous, field.name) != getattr(config, field.name):
            raise ValueError(f"adapter {adapter_name!r} already has LoRA with {field.name}="
                             f"{getattr(previous, field.name)!r}; new layers must use the same value (got "
                             f"{getattr(config, field.name)!r}), or another adapter_name")
    if any(isinstance(c.target_modules, re.Pattern) or c.target_modules == ALL_LINEAR for c in (previous, config)):
        raise ValueError(f"adapter {adapter_name!r} (or the new call) chooses its layers by a regular expression or "
                         f"'{ALL_LINEAR}'; such an adapter cannot be extended: use another adapter_name")


def choose_layers(model, config):
    """{name: (layer, r, α)} of the layers `config` selects in `model`, in model order (no other checks).

    A base inside a LoRA layer counts as that layer, so the answer is the same before and after
    apply_lora; r and α are the layer's own (rank_pattern, alpha_pattern).
    Raises:
        ValueError: a target, exclusion, layer index or pattern key that selects nothing.
    """
    check_not_a_layer(model, (nn.Linear, nn.Embedding, LoRALayer))
    # quantized linear classes are found by duck type, so this module imports none of them
    types = {nn.Linear, LoRALinear} | {type(m) for m in model.modules() if is_quantized_linear(m)}
    if config.target_modules != ALL_LINEAR:
        types |= {nn.Embedding, LoRAEmbedding}
    chosen = select_layers(model, config.target_modules, config.exclude_modules, config.layers_to_transform,
                           config.layers_pattern, types=tuple(sorted(types, key=lambda t: t.__name__)))
    modules = dict(model.named_modules())
    plan = {}
    for name, module in chosen:
        parent = name.rpartition(".")[0]
        if isinstance(modules[parent], LoRALayer):  # a base inside a LoRA layer: adapt that layer
            name, module = parent, modules[parent]
        plan[name] = module
    check_pattern_keys("rank_pattern", config.rank_pattern, list(plan))
    check_pattern_keys("alpha_pattern", config.alpha_pattern, list(plan))
    return {name: (module, *config.rank_alpha(name)) for name, module in plan.items()}


def plan_lora(model, config, adapter_name="default"):
    """Check `config` against `model`; return [(name, layer, r, α)] that apply_lora would adapt. Changes nothing.

    A layer in the list is a linear layer or embedding to wrap, or a LoRA layer that gets one more
    adapter; r and α are the layer's own (rank_pattern, alpha_pattern).
    Raises:
        ValueError: see apply_lora.
    """
    if not isinstance(config, LoraConfig):
        raise ValueError(f"config={config!r}: give a lora.LoraConfig, or use the keyword form "
                         "apply_lora(model, rank=8, alpha=16, targets=...)")
    check_adapter_name(adapter_name)
    rows = [(name, module, r, a) for name, (module, r, a) in choose_layers(model, config).items()]
    for name, module, r, _ in rows:
        _check_layer(name, module, adapter_name, r, config)
    _check_extension(model, adapter_name, config)
    return rows


def apply_lora(model, config=None, adapter_name="default", **keywords):
    """Add LoRA adapter `adapter_name` to the targeted layers of `model` in place; freeze the rest.

    A targeted nn.Linear (or quantized linear) is replaced by a LoRALinear wrapping it, an nn.Embedding
    by a LoRAEmbedding; a layer that is a LoRA layer already gets one more adapter. The first adapter of
    a model is active. A new adapter added beside others is inactive and frozen, as in PEFT:
    set_adapter(model, adapter_name) selects it. Calling again with the same name extends that adapter
    to more layers (same settings).

        apply_lora(model, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"]))
        apply_lora(model, rank=4, alpha=8, targets="c_attn")      # the same model, in our keywords

    Args:
        model: any nn.Module.
        config: a lora.LoraConfig (PEFT's fields; see lora.config). Or leave it out and give
            keywords (lora.config.KEYWORD_DEFAULTS): rank, alpha, dropout, targets ("c_attn, c_proj",
            a list, "all-linear" or "re:<regex>"), use_rslora, use_dora, init ("default", "gaussian",
            "pissa", "pissa_niter_<k>"), exclude, layers_to_transform, layers_pattern, rank_pattern,
            alpha_pattern.
        adapter_name: letters, digits, "_" and "-"; "default" unless you keep several adapters.
    PiSSA writes the residual W0 − s B A into each base weight, so the adapter only works on that
    modified base (save it beside the adapter).
    Returns:
        the same model; `model.lora_configs[adapter_name]` is the LoraConfig (save_adapter writes it).
    Raises:
        ValueError: a bad setting or name; a target, exclusion, layer index or pattern key matching
            nothing (the message lists the candidates), or naming an unsupported module; a target that
            already has this adapter or is merged; a rank larger than min(d_in, d_out) of a layer; an
            existing adapter of this name with other settings; PiSSA on a quantized or tied weight.
            The model is unchanged when this is raised.
    """
    if config is None:
        config = config_from_keywords(**keywords)
    elif keywords:
        raise ValueError(f"give a LoraConfig or keywords, not both (got a config and {sorted(keywords)})")
    plan = plan_lora(model, config, adapter_name)
    inits = _initial_weights(model, plan, config)  # every SVD before any change
    configs = getattr(model, "lora_configs", {})
    active = not active_adapters(model) or adapter_name in active_adapters(model)
    for name, module, r, a in plan:
        layer = module if isinstance(module, LoRALayer) else _wrap(model, name, module)
        adapter = layer.add_adapter(adapter_name, config, r, a)
        if name in inits:
            _set_initial(layer, adapter, *inits[name])
        if active:
            layer.set_active(layer.active_adapters + [adapter_name])
    configs[adapter_name] = _joined(configs.get(adapter_name), config)
    model.lora_configs = configs
    mark_only_lora_trainable(model)
    return model


def _initial_weights(model, plan, config):
    """{name: (A, B, new base weight)} for init "gaussian" or PiSSA, computed for every layer first."""
    if config.init == "default":
        return {}
    out = {}
    for name, module, r, a in plan:
        if isinstance(module, (nn.Embedding, LoRAEmbedding)):
            continue  # PEFT's embedding starts at A = 0, B ~ N(0, 1) for "gaussian" too
        weight = module.base_weight() if isinstance(module, LoRALinear) else module.weight
        base_name = f"{name}.base" if isinstance(module, LoRALinear) else name
        if check_init(config.init)[0] == "pissa" and tied_with(model, base_name):
            raise ValueError(f"{name!r}'s weight is shared with another module; PiSSA would write its residual into "
                             f"both. Untie it first (lora.untie_weight(model, {base_name!r}))")
        out[name] = lora_init(config.init, weight.detach(), r, lora_scaling(r, a, config.use_rslora))
    return out


@torch.no_grad()
def _set_initial(layer, adapter, A, B, weight):
    """Copy an initialisation into the adapter: A, B, the (PiSSA) base weight; DoRA's m then follows PEFT."""
    adapter.lora_A.copy_(A)
    adapter.lora_B.copy_(B)
    if weight is not layer.base.weight:
        layer.base.weight.copy_(weight)
    if adapter.use_dora:  # m = ‖W_res + s B A‖, as PEFT computes it after PiSSA
        adapter.init_magnitude(layer.base_weight())


def _wrap(model, name, module):
    """Swap `module` at `name` for a LoRA layer around it, holding no adapter yet; return that layer."""
    weight = getattr(module, "weight", None)
    tied = tied_with(model, name) if isinstance(weight, torch.Tensor) else []
    layer = LoRAEmbedding(module) if isinstance(module, nn.Embedding) else LoRALinear(module)
    if tied:
        layer.mark_tied(tied, weight)
    set_module(model, name, layer)
    return layer


def _joined(previous, config):
    """The LoraConfig model.lora_configs keeps for an adapter: `config`, or `previous` with both target lists."""
    if previous is None:
        return config
    names = tuple(dict.fromkeys((*previous.target_modules, *config.target_modules)))
    return dataclasses.replace(previous, target_modules=names)
