"""Worked solution of notebooks/exercises/params.py: what a LoRA adapter costs in parameters (LoRA §4.1)."""


def lora_param_count(d_in, d_out, r):
    return r * d_in + d_out * r  # A (r, d_in) and B (d_out, r)


def lora_model_param_count(layer_shapes, r):
    return sum(lora_param_count(d_in, d_out, r) for d_in, d_out in layer_shapes)
