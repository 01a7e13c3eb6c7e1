"""Worked solution of notebooks/exercises/quantized_linear.py: a frozen 4-bit linear layer (QLoRA §3)."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class _DequantizedLinear(torch.autograd.Function):
    """y = x ŵᵀ + b, with ŵ rebuilt from the 4-bit codes in forward and again in backward."""

    @staticmethod
    def forward(ctx, x, layer, bias):
        ctx.layer = layer  # the module, not a tensor: autograd keeps no float copy of ŵ
        return F.linear(x, layer.dequantize_weight().to(x.dtype), bias)

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out @ ctx.layer.dequantize_weight().to(grad_out.dtype), None, None  # ∂L/∂x = g ŵ


class LinearNF4(nn.Module):
    def __init__(self, linear, quantize, dequantize, blocksize=64):
        super().__init__()
        self.in_features, self.out_features, self.blocksize = linear.in_features, linear.out_features, blocksize
        self._dequantize = dequantize
        packed, absmax = quantize(linear.weight.detach(), blocksize)
        self.register_buffer("packed", packed)  # buffers: .to(device) moves them, state_dict saves them
        self.register_buffer("absmax", absmax)
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def dequantize_weight(self):
        return self._dequantize(self.packed, self.absmax, self.blocksize, (self.out_features, self.in_features))

    def forward(self, x):
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return _DequantizedLinear.apply(x, self, bias)
