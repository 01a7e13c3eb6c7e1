"""Bug in merge_and_unload: ΔW is added in place into each base weight, also into a weight that the layer
shares with another module (GPT-2's output head is the token embedding), which then changes too."""

import torch

import lora


def merge_and_unload(model):
    for name, layer in list(lora.lora_layers(model)):
        with torch.no_grad():
            layer.base.weight += layer.delta_weight().to(layer.base.weight.dtype)  # in place, whoever shares it
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.base)
    return model
