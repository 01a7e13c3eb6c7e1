"""Finding a model's LoRA layers by type, and freezing all but the active adapters.

Two layer types carry adapters: LoRALinear (any number of named adapters) and LoRAEmbedding (one
adapter, named by its `adapter_name`). Nothing here knows about a particular model: LoRA layers are
found by type, never by parameter names.
"""

from lora.embedding import LoRAEmbedding
from lora.layer import LoRALinear
from lora.params import count_parameters


def lora_layers(model):
    """Yield (name, LoRALinear) for every LoRA linear layer of `model`, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def lora_embeddings(model):
    """Yield (name, LoRAEmbedding) for every LoRA embedding of `model`, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, LoRAEmbedding):
            yield name, module


def active_adapters(model):
    """Names of the adapters that are active on some layer of `model`, in the order they were added."""
    configs = getattr(model, "lora_configs", {})
    active = {n for _, layer in lora_layers(model) for n in layer.active_adapters}
    active |= {emb.adapter_name for _, emb in lora_embeddings(model) if emb.active}
    return [n for n in configs if n in active]


def mark_only_lora_trainable(model):
    """Set requires_grad on the tensors of every active adapter (A, B, DoRA's m) and clear it on all else.

    Returns:
        (trainable, total) parameter counts, as count_parameters gives them.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    for _, layer in lora_layers(model):
        for name in layer.active_adapters:
            layer.adapters[name].requires_grad_(True)
    for _, emb in lora_embeddings(model):
        if emb.active:
            emb.lora_embedding_A.requires_grad_(True)
            emb.lora_embedding_B.requires_grad_(True)
    return count_parameters(model)
