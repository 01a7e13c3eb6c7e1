"""Finding a model's LoRA layers by type, and freezing all but the active adapters.

Two layer types carry adapters, LoRALinear and LoRAEmbedding, and both keep the one contract of
lora.base_layer (named adapters, active and merged lists), so everything here treats them alike.
Nothing here knows about a particular model: LoRA layers are found by type, never by parameter names.
"""

from lora.base_layer import LoRALayer
from lora.embedding import LoRAEmbedding
from lora.layer import LoRALinear
from lora.params import count_parameters


def lora_modules(model):
    """Yield (name, layer) for every LoRA layer of `model` (linear and embedding), in module order."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALayer):
            yield name, module


def lora_layers(model):
    """Yield (name, LoRALinear) for every LoRA linear layer of `model`, in module order."""
    return ((n, m) for n, m in lora_modules(model) if isinstance(m, LoRALinear))


def lora_embeddings(model):
    """Yield (name, LoRAEmbedding) for every LoRA embedding of `model`, in module order."""
    return ((n, m) for n, m in lora_modules(model) if isinstance(m, LoRAEmbedding))


def adapter_names(model):
    """Names of the adapters of `model`, in the order they were added (model.lora_configs), then any
    that only layers built by hand hold."""
    names = list(getattr(model, "lora_configs", {}))
    return names + list(dict.fromkeys(a for _, layer in lora_modules(model) for a in layer.adapters if a not in names))


def active_adapters(model):
    """Names of the adapters that are active on some layer of `model`, in the order they were added."""
    active = {n for _, layer in lora_modules(model) for n in layer.active_adapters}
    return [n for n in adapter_names(model) if n in active]


def check_adapters_exist(model, names):
    """Raise ValueError naming the first of `names` that `model` does not have, and listing those it has."""
    existing = adapter_names(model)
    for name in names:
        if name not in existing:
            raise ValueError(f"unknown adapter {name!r}; the model has {existing or 'no adapters (call apply_lora)'}")


def mark_only_lora_trainable(model):
    """Set requires_grad on the tensors of every active adapter (A, B, DoRA's m) and clear it on all else.

    Returns:
        (trainable, total) parameter counts, as count_parameters gives them.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    for _, layer in lora_modules(model):
        for name in layer.active_adapters:
            layer.adapters[name].requires_grad_(True)
    return count_parameters(model)
