"""Bug in dora_forward: the norm ‖W0 + ΔW‖ keeps its gradient, where DoRA §4.3 treats it as a constant in
backward; the outputs are the same, the gradients of A, B and m are not."""

import torch.nn.functional as F

import lora


def dora_forward(x, weight, bias, lora_A, lora_B, scaling, magnitude, dropout=None, base_out=None):
    if base_out is None:
        base_out = F.linear(x, weight, bias)
    g = magnitude / lora.weight_norm(weight + scaling * (lora_B @ lora_A))  # (d_out,), not detached
    x = x if dropout is None else dropout(x)
    return base_out + (g - 1) * F.linear(x, weight) + g * ((x @ lora_A.T) @ lora_B.T) * scaling
