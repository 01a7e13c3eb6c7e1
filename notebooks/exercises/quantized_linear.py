"""Exercise: QLoRA's frozen 4-bit linear layer, with gradients through its dequantised weight (Dettmers et al., 2023, §3).

QLoRA keeps the base model in 4 bits and trains LoRA adapters on top (§3, Eq. 5): every forward pass
dequantises the weight, ŵ = dequant(W₄), to compute y = ŵ x + b, and backpropagation goes through ŵ
to the layer's input, so that the adapters of the layers below receive their gradients. The 4-bit
weight itself never trains, and no float copy of it is kept, not even for backward: that memory is
what QLoRA saves. (Autograd keeps whatever tensors a differentiable operation needs for its backward,
and the input gradient of a linear layer needs its weight.)

The quantiser is given: `quantize(w, blocksize) -> (packed, absmax)` and
`dequantize(packed, absmax, blocksize, shape) -> ŵ`, the functions of the nf4 exercise (yours, or the
library's). Copy this file to notebooks/exercises/mine/ and grade it (docs/exercises.md):

    mkdir -p notebooks/exercises/mine && cp notebooks/exercises/quantized_linear.py notebooks/exercises/mine/
    pytest tests/test_exercises.py --impl=mine -k quantized_linear

Shape legend:
    d_in  in_features   d_out  out_features   x (..., d_in)   ŵ (d_out, d_in)   b (d_out,) or None
"""

import torch  # noqa: F401  (you will need it)
import torch.nn as nn


class LinearNF4(nn.Module):
    """A frozen linear layer whose weight is stored as 4-bit codes and block scales.

    Args:
        linear: the nn.Linear to quantise; its bias is kept in float, frozen.
        quantize, dequantize: the quantiser (see the module docstring).
        blocksize: weights per block.
    The codes and scales are buffers of the module (so .to(device) moves them and state_dict saves
    them); the module has no float weight and no trainable parameter. Like nn.Linear it has the
    attributes in_features, out_features and bias: with them and dequantize_weight() the library's
    LoRALinear recognises it as a quantized base and can wrap it (QLoRA: LoRA over a 4-bit layer).
    """

    def __init__(self, linear, quantize, dequantize, blocksize=64):
        super().__init__()
        raise NotImplementedError

    def dequantize_weight(self):
        """ŵ, (d_out, d_in) float32, from the stored codes and scales."""
        raise NotImplementedError

    def forward(self, x):
        """y = ŵ x + b at every position: (..., d_in) -> (..., d_out), differentiable with respect to x
        (∂L/∂x goes through ŵ), with no float (d_out, d_in) tensor kept for backward."""
        raise NotImplementedError
