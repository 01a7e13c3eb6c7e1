"""Exercise: LoRA's backward pass by hand: the three gradients, in a torch.autograd.Function (LoRA §4.1).

A LoRA layer computes h = W x + b + s · B A x for every input vector x, with W and b frozen and
s = α / r (§4.1, Eq. 3). Training needs three gradients, given g = ∂L/∂h at every position: the one of
the input x (it flows on to the layers below), and those of A and of B (the only parameters that
train). There is none for W: that is what saves LoRA the optimiser state and gradients of W (§4.1).
Derive them with the chain rule, write them as functions, and use them as the backward of an
autograd.Function; torch.autograd.gradcheck then compares your backward with finite differences.

Copy this file to notebooks/exercises/mine/ and grade it (docs/exercises.md):

    mkdir -p notebooks/exercises/mine && cp notebooks/exercises/lora_backward.py notebooks/exercises/mine/
    pytest tests/test_exercises.py --impl=mine -k lora_backward

Shape legend:
    x (..., d_in)   W (d_out, d_in)   b (d_out,) or None   A (r, d_in)   B (d_out, r)   grad_out = g (..., d_out)
    ...  any leading dimensions (batch, time); a parameter's gradient sums over all of them
    scaling  s = α / r, a float
"""

import torch


def grad_x(grad_out, W, A, B, scaling):
    """∂L/∂x at every position: (..., d_out) -> (..., d_in). Build no (d_out, d_in) matrix besides W."""
    raise NotImplementedError


def grad_A(x, grad_out, B, scaling):
    """∂L/∂A, (r, d_in), summed over every position of x and grad_out."""
    raise NotImplementedError


def grad_B(x, grad_out, A, scaling):
    """∂L/∂B, (d_out, r), summed over every position of x and grad_out."""
    raise NotImplementedError


class LoRAFunction(torch.autograd.Function):
    """The LoRA layer's output, h = W x + b + s · B A x at every position, with a hand-written backward.

    forward(ctx, x, W, b, A, B, scaling) returns h (..., d_out) and keeps on ctx what backward needs.
    backward(ctx, grad_out) returns one gradient per input of forward, in order: your three gradients
    where ctx.needs_input_grad asks for them, and None for the frozen W and b and for the float scaling.
    """

    @staticmethod
    def forward(ctx, x, W, b, A, B, scaling):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad_out):
        raise NotImplementedError


def lora_linear(x, W, b, A, B, scaling):
    """h through LoRAFunction: (..., d_in) -> (..., d_out). (Call LoRAFunction.apply; nothing else.)"""
    raise NotImplementedError
