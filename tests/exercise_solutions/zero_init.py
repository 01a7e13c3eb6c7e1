"""Worked solution of notebooks/exercises/zero_init.py: LoRA's initialisation and the gradients of A and B."""

import math

import torch


def init_lora(d_in, d_out, r):
    # Kaiming-uniform with a = √5: gain √(2 / (1 + 5)) = 1/√3, bound gain·√(3 / d_in) = 1/√d_in
    bound = 1 / math.sqrt(d_in)
    A = torch.empty(r, d_in).uniform_(-bound, bound)
    B = torch.zeros(d_out, r)
    return A, B


def lora_grads(x, A, B, grad_out, alpha, r):
    s = alpha / r
    x2 = x.reshape(-1, x.shape[-1])                  # (..., d_in) -> (N, d_in)
    g2 = grad_out.reshape(-1, grad_out.shape[-1])    # (..., d_out) -> (N, d_out)
    grad_B = s * g2.T @ (x2 @ A.T)                   # (d_out, N) @ (N, r) -> (d_out, r)
    grad_A = s * (g2 @ B).T @ x2                     # (r, N) @ (N, d_in) -> (r, d_in)
    return grad_A, grad_B
