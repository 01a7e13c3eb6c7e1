"""Worked solution of notebooks/exercises/lora_backward.py: LoRA's backward pass by hand (LoRA §4.1).

With h = x Wᵀ + b + s (x Aᵀ) Bᵀ and g = ∂L/∂h, the chain rule through u = x Aᵀ gives
∂L/∂x = g W + s (g B) A, ∂L/∂B = s gᵀ u and ∂L/∂A = s (g B)ᵀ x, summed over every leading position.
"""

import torch


def _rows(t):
    return t.reshape(-1, t.shape[-1])  # (..., d) -> (N, d)


def grad_x(grad_out, W, A, B, scaling):
    return grad_out @ W + scaling * ((grad_out @ B) @ A)  # (..., d_out) -> (..., r) -> (..., d_in)


def grad_A(x, grad_out, B, scaling):
    return scaling * (_rows(grad_out) @ B).T @ _rows(x)  # (r, N) @ (N, d_in) -> (r, d_in)


def grad_B(x, grad_out, A, scaling):
    return scaling * _rows(grad_out).T @ (_rows(x) @ A.T)  # (d_out, N) @ (N, r) -> (d_out, r)


class LoRAFunction(torch.autograd.Function):
    """h = x Wᵀ + b + s (x Aᵀ) Bᵀ with the backward above; W and b are frozen and get no gradient."""

    @staticmethod
    def forward(ctx, x, W, b, A, B, scaling):
        ctx.save_for_backward(x, W, A, B)
        ctx.scaling = scaling
        out = x @ W.T + scaling * ((x @ A.T) @ B.T)
        return out if b is None else out + b

    @staticmethod
    def backward(ctx, grad_out):
        x, W, A, B = ctx.saved_tensors
        s = ctx.scaling
        gx = grad_x(grad_out, W, A, B, s) if ctx.needs_input_grad[0] else None
        gA = grad_A(x, grad_out, B, s) if ctx.needs_input_grad[3] else None
        gB = grad_B(x, grad_out, A, s) if ctx.needs_input_grad[4] else None
        return gx, None, None, gA, gB, None  # one per forward input: x, W, b, A, B, scaling


def lora_linear(x, W, b, A, B, scaling):
    return LoRAFunction.apply(x, W, b, A, B, scaling)
