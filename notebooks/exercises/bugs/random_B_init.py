"""Bug in LoRALinear: B is initialised like A (Kaiming-uniform) instead of zero, so ΔW ≠ 0 at step 0."""

import math

import torch
import torch.nn as nn

import lora


class LoRALinear(lora.LoRALinear):
    def __init__(self, base, rank, alpha, *args, **kwargs):
        super().__init__(base, rank, alpha, *args, **kwargs)
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.lora_B, a=math.sqrt(5))
