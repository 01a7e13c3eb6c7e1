"""Taking LoRA out of a model again: merge, unmerge, merge-and-unload, and switching it off for a while.

Merging writes ΔW into the base weight (LoRA §4.1: no inference latency). A base weight shared with
another module (GPT-2's lm_head and transformer.wte hold one matrix) would change that module too,
and the merged model would no longer compute what the unmerged one did. Every merge here therefore
refuses such a layer before changing anything, and says what to do: lora.untie_weight(model, name)
gives the layer its own copy (the model then holds two matrices where it held one), or keep the
adapter unmerged (see docs/lora.md, "Tied weights").

Every function here checks every layer first and changes the model only when all checks pass; an
error names the layer and its adapters.
"""

import contextlib

import torch

from lora.model_layers import lora_modules
from lora.targets import set_module
from lora.tied import tied_with


def check_untied(model, layers):
    """Raise ValueError if the base weight of one of `layers` [(name, layer)] is shared with another module."""
    for name, layer in layers:
        if not isinstance(getattr(layer.base, "weight", None), torch.Tensor):
            continue  # a quantized base stores no float weight to share
        others = tied_with(model, f"{name}.base")
        if others:
            raise ValueError(f"{name!r}'s base weight is shared with {others}; merging its adapter would change them "
                             f"too. Call lora.untie_weight(model, '{name}.base') first (the model then keeps two "
                             "copies), or keep the adapter unmerged")


def _named(name, layer, error):
    return ValueError(f"{name!r} (adapters {layer.active_adapters or layer.merged_adapters}): {error}")


def merge_lora(model):
    """merge() every LoRA layer (W ← W + ΔW of its active adapters, DoRA's W' for a DoRA adapter).

    Every layer is checked before any weight changes (tied, quantized); if a merge still fails (a
    non-finite merged weight), the layers merged by this call get their old weights back, bit for
    bit. Switching adapters afterwards raises until unmerge_lora(model).
    Raises:
        ValueError: a tied base weight (see the module docstring), a quantized base (use
            merge_and_unload or merge_and_requantize), or a non-finite merged weight; naming the layer.
    """
    layers = [(n, m) for n, m in lora_modules(model) if not m.merged and m.active_adapters]
    check_untied(model, layers)
    for name, layer in layers:
        try:
            layer.check_mergeable()
        except ValueError as e:
            raise _named(name, layer, e) from None
    done = []  # (layer, its base weight before this call)
    try:
        for name, layer in layers:
            before = layer.base.weight.detach().clone()
            try:
                layer.merge()
            except ValueError as e:
                raise _named(name, layer, e) from None
            done.append((layer, before))
    except ValueError:
        with torch.no_grad():
            for layer, before in done:  # bit-exact: the old weight is copied back, not W + ΔW − ΔW computed
                layer.base.weight.copy_(before)
                layer.forget_merge()
        raise
    return model


def unmerge_lora(model):
    """unmerge() every merged LoRA layer (W ← W − ΔW, or DoRA's inverse); all are computed before any is written.

    Raises:
        ValueError: an unmerged weight is not finite, naming the layer; nothing changed then.
    """
    staged = []
    for name, layer in lora_modules(model):
        if layer.merged:
            try:
                staged.append((layer, layer.unmerged_weight()))
            except ValueError as e:
                raise _named(name, layer, e) from None
    with torch.no_grad():
        for layer, weight in staged:
            layer.base.weight.copy_(weight)
            layer.forget_merge()
    return model


def merge_and_unload(model):
    """Replace every LoRA layer by a plain one holding its merged weight; return the model.

    A LoRALinear becomes an nn.Linear with W + ΔW of its active adapters (DoRA: m (W + ΔW) / ‖W + ΔW‖),
    a LoRAEmbedding an nn.Embedding with E + ΔE. For a quantized base the new layer is a float
    nn.Linear holding dequant(W) + ΔW: re-quantizing would round a second time. Afterwards the state
    dict has exactly the keys of the model before apply_lora and loads into a fresh instance of its
    class; `model.lora_configs` is removed. Every new layer is built before any is swapped in, so a
    failure changes nothing.
    Raises:
        ValueError: the model has no LoRA layer, a tied base weight (see the module docstring), or some
            merged weight is not finite (the layer is named).
    """
    layers = list(lora_modules(model))
    if not layers:
        raise ValueError(f"{type(model).__name__} has no LoRA layers to merge")
    check_untied(model, [(n, m) for n, m in layers if m.active_adapters and not m.merged])
    replacements = []
    for name, layer in layers:
        try:
            replacements.append((name, layer.to_plain()))
        except ValueError as e:
            raise _named(name, layer, e) from None
    for name, plain in replacements:
        set_module(model, name, plain)
    if hasattr(model, "lora_configs"):
        del model.lora_configs
    return model


@contextlib.contextmanager
def disable_lora(model):
    """Context manager: inside it the model computes its base output; the adapters stay in place.

    Raises:
        ValueError: a layer is merged (its ΔW is inside the weight; unmerge_lora(model) first).
    """
    layers = list(lora_modules(model))
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
