"""Worked solution of notebooks/exercises/lora_layer.py: LoRA's forward pass and merge (LoRA §4.1)."""


def delta_weight(A, B, alpha, r):
    return (alpha / r) * (B @ A)  # (d_out, r) @ (r, d_in) -> (d_out, d_in)


def lora_forward(x, W, b, A, B, alpha, r):
    base = x @ W.T if b is None else x @ W.T + b               # (..., d_in) -> (..., d_out)
    return base + (alpha / r) * ((x @ A.T) @ B.T)              # through the r-wide intermediate (..., r)


def merge(W, A, B, alpha, r):
    return W + delta_weight(A, B, alpha, r)  # a new tensor: W is not touched


def unmerge(W_merged, A, B, alpha, r):
    return W_merged - delta_weight(A, B, alpha, r)
