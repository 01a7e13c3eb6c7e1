"""Bug in apply_lora: the model's biases stay trainable, so fine-tuning moves more than the adapters."""

import lora


def apply_lora(model, *args, **kwargs):
    lora.apply_lora(model, *args, **kwargs)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.requires_grad_(True)
    return model
