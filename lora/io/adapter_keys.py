"""The tensors one layer contributes to a PEFT adapter file, by adapter type: names, shapes, copy in and out.

    linear layer      base_model.model.<path>.lora_A.weight            (r, d_in)
                      base_model.model.<path>.lora_B.weight            (d_out, r)
      with DoRA       base_model.model.<path>.lora_magnitude_vector    (d_out,)   (no ".weight": PEFT's name)
    embedding         base_model.model.<path>.lora_embedding_A         (r, V)     (raw Parameters in PEFT)
                      base_model.model.<path>.lora_embedding_B         (C, r)

"base_model.model." is where PEFT's wrappers put the original model. PEFT drops the adapter name in
the file; the folder says which adapter it is (lora.io.adapter_layout).

Shape legend: r rank, d_in / d_out a linear layer's sizes, V / C an embedding's rows / width.
"""

import torch
import torch.nn as nn

from lora.embedding import EmbeddingAdapter, LoRAEmbedding

PREFIX = "base_model.model."


def peft_key(name, which):
    """The file key of tensor `which` of layer `name` ("lora_A" -> "<prefix><name>.lora_A.weight")."""
    suffix = "" if which in ("lora_magnitude_vector", "lora_embedding_A", "lora_embedding_B") else ".weight"
    return f"{PREFIX}{name}.{which}{suffix}"


def layer_shapes(module, rank, use_dora=False):
    """{tensor name: shape} an adapter of rank r has on `module` (a linear layer or embedding, wrapped or not)."""
    if isinstance(module, (nn.Embedding, LoRAEmbedding)):
        return {"lora_embedding_A": (rank, module.num_embeddings), "lora_embedding_B": (module.embedding_dim, rank)}
    shapes = {"lora_A": (rank, module.in_features), "lora_B": (module.out_features, rank)}
    if use_dora:
        shapes["lora_magnitude_vector"] = (module.out_features,)
    return shapes


def adapter_tensors(layer, adapter_name):
    """{tensor name: tensor} adapter `adapter_name` holds in `layer` (LoRALinear or LoRAEmbedding)."""
    adapter = layer.adapters[adapter_name]
    if isinstance(adapter, EmbeddingAdapter):
        return {"lora_embedding_A": adapter.lora_embedding_A, "lora_embedding_B": adapter.lora_embedding_B}
    out = {"lora_A": adapter.lora_A, "lora_B": adapter.lora_B}
    if adapter.use_dora:
        out["lora_magnitude_vector"] = adapter.lora_magnitude_vector
    return out


@torch.no_grad()
def copy_in(layer, adapter_name, name, tensors):
    """Copy the file's tensors of layer `name` into adapter `adapter_name` of `layer`."""
    for which, param in adapter_tensors(layer, adapter_name).items():
        param.copy_(tensors[peft_key(name, which)])
