"""Bug in LoRALinear: the forward pass adds B A x without the scaling α/r (the merge still applies it)."""

import lora


class LoRALinear(lora.LoRALinear):
    def forward(self, x):
        if self.merged:
            return self.base(x)
        return self.base(x) + (self.dropout(x) @ self.lora_A.T) @ self.lora_B.T  # (..., d_in) -> (..., d_out)
