"""Worked solution of notebooks/exercises/dora.py: DoRA's forward pass, magnitude and direction (DoRA §4.1, §4.3)."""

import torch


def weight_norm(W):
    return torch.linalg.vector_norm(W, dim=1)  # (d_out, d_in) -> (d_out,): one norm per output row


def dora_forward(x, W, b, A, B, alpha, r, m):
    adapted = W + (alpha / r) * (B @ A)                   # W0 + ΔW, (d_out, d_in)
    scale = m / weight_norm(adapted).detach()             # (d_out,); the norm is a constant in backward (§4.3)
    out = (x @ adapted.T) * scale                         # (..., d_out): m ⊙ direction, applied to x
    return out if b is None else out + b
