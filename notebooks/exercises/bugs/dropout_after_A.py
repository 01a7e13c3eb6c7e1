"""Bug in LoRALinear: dropout is applied to the r-wide intermediate A x instead of to the input x
(the paper and PEFT drop input features of the low-rank path: dropout(x) Aᵀ Bᵀ)."""

import lora


class LoRALinear(lora.LoRALinear):
    def forward(self, x):
        if self.merged:
            return self.base(x)
        return self.base(x) + (self.dropout(x @ self.lora_A.T) * self.scaling) @ self.lora_B.T  # (..., r) dropped
