"""Several named adapters on one frozen model: list them, choose the active ones, delete one.

    apply_lora(model, ..., adapter_name="a")    add adapter "a" (the first one is active)
    set_adapter(model, ["a", "b"])              h = W0 x + ΔW_a x + ΔW_b x on every layer
    delete_adapter(model, "b")                  gone; the last one gone leaves the plain base model
    list_adapters(model)                        {"a": {r, lora_alpha, ..., "active": True}, ...}

The adapters live inside the LoRA layers (`layer.adapters[name]`, linear layers and embeddings
alike); `model.lora_configs[name]` keeps each one's LoraConfig. The semantics are PEFT's: several
active adapters add their ΔW, only the active ones are trainable, and the base stays frozen.
Switching never touches the base weights, and it is refused while the model is merged, so a merged
weight never holds one adapter while another is active.
"""

import dataclasses
import warnings

from lora.layer import check_dora_alone
from lora.model_layers import (
    active_adapters,
    adapter_names,
    check_adapters_exist,
    lora_modules,
    mark_only_lora_trainable,
)
from lora.targets import set_module


def list_adapters(model):
    """{name: the LoraConfig's fields (PEFT's names) and "active"} for every adapter, in the order added."""
    active = active_adapters(model)
    return {name: dict(dataclasses.asdict(cfg), active=name in active)
            for name, cfg in getattr(model, "lora_configs", {}).items()}


def set_adapter(model, names):
    """Make exactly the adapters `names` (a name or a list) active; they alone are trainable.

    Forward then adds Σ ΔW of the active adapters on each layer (a layer without one of them adds
    nothing for it). The base weights are not touched.

    Raises:
        ValueError: no names, an unknown name (the message lists the existing ones), a name twice,
            a DoRA adapter beside another one, or a merged model (unmerge_lora(model) first). The
            model is unchanged when this is raised.
    """
    names = [names] if isinstance(names, str) else list(names) if isinstance(names, (list, tuple)) else names
    if not isinstance(names, list) or not names:
        raise ValueError(f"names={names!r}: give an adapter name or a non-empty list of names")
    check_adapters_exist(model, names)
    if len(set(names)) != len(names):
        raise ValueError(f"names={names!r}: each adapter can be active once")
    layers = list(lora_modules(model))
    dora = {a for _, layer in layers for a, adapter in layer.adapters.items() if adapter.use_dora}
    check_dora_alone(names, [n for n in names if n in dora])
    merged = [n for n, layer in layers if layer.merged]
    if merged:
        raise ValueError(f"cannot switch adapters while {merged[0]!r} is merged; call unmerge_lora(model) first")
    for _, layer in layers:
        layer.set_active([n for n in names if n in layer.adapters])
    mark_only_lora_trainable(model)
    return model


def delete_adapter(model, name):
    """Remove adapter `name` from every layer; a layer left without adapters becomes its base layer again.

    If the deleted adapter was the only active one, the first remaining adapter becomes active (with a
    warning), as in PEFT. Deleting the last adapter leaves the plain base model: its modules and state
    dict are those from before apply_lora, and `model.lora_configs` is removed.

    Raises:
        ValueError: an unknown name, or the adapter is merged (unmerge_lora(model) first).
    """
    check_adapters_exist(model, [name])
    layers = [(n, layer) for n, layer in lora_modules(model) if name in layer.adapters]
    merged = [n for n, layer in layers if name in layer.merged_adapters]
    if merged:
        raise ValueError(f"adapter {name!r} is merged into {merged[0]!r}; call unmerge_lora(model) first")
    was_active = active_adapters(model)
    for layer_name, layer in layers:
        layer.delete_adapter(name)
        if not layer.adapters:
            set_module(model, layer_name, layer.base)
    getattr(model, "lora_configs", {}).pop(name, None)
    remaining = adapter_names(model)
    if not remaining:
        if hasattr(model, "lora_configs"):
            del model.lora_configs
        return model
    still_active = [n for n in was_active if n != name]
    if not still_active:
        warnings.warn(f"adapter {name!r} was the active one; {remaining[0]!r} is active now", stacklevel=2)
    set_adapter(model, still_active or remaining[:1])
    return model
