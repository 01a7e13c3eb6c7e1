"""Taking LoRA out of a model again: merge, unmerge, merge-and-unload, and switching it off for a while.

Merging writes ΔW into the base weight (LoRA §4.1: no inference latency). A base weight shared with
another module (GPT-2's lm_head and transformer.wte hold one matrix) would change that module too,
and the merged model would no longer compute what the unmerged one did. Every merge here therefore
refuses such a layer before changing anything, and says what to do: lora.untie_weight(model, name)
gives the layer its own copy (the model then holds two matrices where it held one), or keep the
adapter unmerged (see docs/lora.md, "Tied weights").
"""

import contextlib

import torch

from lora.embedding import LoRAEmbedding
from lora.model_layers import lora_embeddings, lora_layers
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


def merge_lora(model):
    """merge() every LoRA layer (W ← W + ΔW of its active adapters, DoRA's W' for a DoRA adapter) and
    embedding; if one fails, the ones merged by this call get their old weights back, bit for bit. Switching adapters afterwards
    raises until unmerge_lora(model).

    Raises:
        ValueError: a tied base weight (see the module docstring; checked before anything changes),
            a quantized base, or a non-finite merged weight.
    """
    layers = [(n, m) for n, m in lora_layers(model) if not m.merged and m.active_adapters]
    layers += [(n, m) for n, m in lora_embeddings(model) if not m.merged and m.active and not m.disabled]
    check_untied(model, layers)
    done = []  # (layer, its base weight before this call)
    try:
        for _, layer in layers:
            before = layer.base.weight.detach().clone()
            layer.merge()
            done.append((layer, before))
    except ValueError:
        with torch.no_grad():
            for layer, before in done:  # bit-exact: the old weight is copied back, not W + ΔW − ΔW computed
                layer.base.weight.copy_(before)
                _forget_merge(layer)
        raise
    return model


def _forget_merge(layer):
    """Mark a layer whose old weight was restored as unmerged (the bookkeeping merge() set)."""
    if isinstance(layer, LoRAEmbedding):
        layer.merged = False
        return
    layer.merged_adapters = []
    for adapter in layer.adapters.values():
        adapter.dora_norm = None


def unmerge_lora(model):
    """unmerge() every merged LoRA layer and embedding (W ← W − ΔW, or DoRA's inverse)."""
    for _, layer in [*lora_layers(model), *lora_embeddings(model)]:
        if layer.merged:
            layer.unmerge()
    return model


def merge_and_unload(model):
    """Replace every LoRA layer by a plain one holding its merged weight; return the model.

    A LoRALinear becomes an nn.Linear with W + ΔW of its active adapters (DoRA: m (W + ΔW) / ‖W + ΔW‖),
    a LoRAEmbedding an nn.Embedding with E + ΔE (its base alone if its adapter is not active). For a
    quantized base the new layer is a float nn.Linear holding dequant(W) + ΔW: re-quantizing would
    round a second time. Afterwards the state dict has exactly the keys of the model before apply_lora
    and loads into a fresh instance of its class; `model.lora_configs` is removed. Every new layer is
    built before any is swapped in, so a failure changes nothing.
    Raises:
        ValueError: the model has no LoRA layer, a tied base weight (see the module docstring), or some
            merged weight is not finite.
    """
    layers, embeddings = list(lora_layers(model)), list(lora_embeddings(model))
    if not layers and not embeddings:
        raise ValueError(f"{type(model).__name__} has no LoRA layers to merge")
    check_untied(model, [(n, m) for n, m in layers if m.active_adapters and not m.merged])
    check_untied(model, [(n, m) for n, m in embeddings if m.active and not m.merged])
    replacements = [(name, layer.to_linear()) for name, layer in layers]
    replacements += [(name, emb.to_embedding() if emb.active or emb.merged else emb.base) for name, emb in embeddings]
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
    layers = [*lora_layers(model), *lora_embeddings(model)]
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
