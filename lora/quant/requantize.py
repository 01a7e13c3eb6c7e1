"""Merging after QLoRA while keeping the 4-bit base: requantise dequant(W₄) + ΔW to NF4.

QLoRA trains ΔW against dequant(W₄), the 4-bit weight the forward pass actually used (QLoRA §3, Eq. 5).
There are three weights one could merge the adapter into:

    (a)  dequant(W₄) + ΔW            exactly the trained model (merge_and_unload): a float layer
    (b)  W₁₆ + ΔW                    the original float weight: off by the quantisation error W₁₆ − dequant(W₄),
                                     which ΔW never saw during training
    (c)  NF4(dequant(W₄) + ΔW)       merge_and_requantize below: 4-bit storage kept, one more NF4 rounding

(c) is (a) rounded once more, so each weight moves by at most the NF4 rounding error of the merged
weight (requantization_bound). A ΔW entry smaller than that error can be rounded away entirely:
dequant(W₄) lies on the NF4 grid, so a small step off the grid rounds back onto the same level.

Shape legend:
    d_in   in_features      d_out  out_features      n = d_out · d_in      nb  blocks = ceil(n / blocksize)
"""

import torch

from lora.model_layers import lora_layers
from lora.quant.nf4 import block_absmax, dequantized_absmax, nf4_codebook, quantize_nf4
from lora.quant.nf4_linear import LinearNF4
from lora.targets import set_module

_EPS = torch.finfo(torch.float32).eps  # float32 rounding of the scaled value and of level · absmax


def nf4_half_gap():
    """g/2 = half the largest gap between adjacent NF4 levels (between -1 and the next level: 0.152)."""
    levels = nf4_codebook()
    return ((levels[1:] - levels[:-1]).max() / 2).item()


def requantization_bound(weight, q):
    """Elementwise bound on |dequant(q) − weight| for q = quantize_nf4(weight, ...) (QLoRA §3, Eq. 1):

        |ŵ − w| ≤ (g/2 + 4ε) · a_b + |a_b − â_b|

    a_b is the absmax of w's block, â_b the scale actually stored (a_b itself without double
    quantisation, its int8 reconstruction with it), g/2 = nf4_half_gap() and ε float32's epsilon.
    Why: the code picks the level nearest w / a_b, at most g/2 away, so |level · a_b − w| ≤ (g/2) · a_b;
    dequantising multiplies the level (|level| ≤ 1) by â_b instead of a_b, adding at most |a_b − â_b|;
    4ε · a_b covers the float32 roundings. Returns a float32 tensor of weight's shape.
    """
    a = block_absmax(weight, q.blocksize)                                           # (nb,) a_b of w
    per_block = (nf4_half_gap() + 4 * _EPS) * a + (a - dequantized_absmax(q)).abs()  # (nb,)
    return per_block.repeat_interleave(q.blocksize)[: weight.numel()].reshape(weight.shape)  # (nb,) -> (d_out, d_in)


@torch.no_grad()
def requantized_layer(layer):
    """A LinearNF4 holding NF4(dequant(W₄) + ΔW) for a LoRALinear over a LinearNF4; nothing is modified.

    The merged weight is the one merge_and_unload would store (layer.to_plain(): dequant(W₄) plus the
    ΔW of the active adapters, checked finite), quantised with the base's blocksize and double
    quantisation; the bias and compute dtype are the base's. With no active adapter ΔW = 0 and the
    base itself is returned, so its codes are not rounded a second time.
    Raises:
        ValueError: the base is not a LinearNF4, or the merged weight is not finite.
    """
    base = layer.base
    if not isinstance(base, LinearNF4):
        raise ValueError(f"requantising needs a LinearNF4 base, got {type(base).__name__}")
    if not layer.active_adapters:
        return base
    merged = layer.to_plain()  # (d_out, d_in) float: dequant(W₄) + ΔW
    q = quantize_nf4(merged.weight, blocksize=base.blocksize, double_quant=base.weight_q.double_quant)
    return LinearNF4(q, merged.bias, compute_dtype=base.compute_dtype)


def merge_and_requantize(model):
    """Replace every LoRALinear by its merge, keeping 4-bit bases in 4 bits; return the model (QLoRA §3).

    Over a LinearNF4 base the new layer is a LinearNF4 of NF4(dequant(W₄) + ΔW), same blocksize and
    double quantisation; over an nn.Linear base it is the float nn.Linear of W + ΔW (as merge_and_unload).
    The cost of keeping 4 bits: every merged weight is rounded to NF4 once more, an extra error of at
    most (g/2) · a_b per weight (half the largest NF4 level gap, 0.152, times its block's absmax), plus
    the double-quantisation error of a_b; requantization_bound gives it elementwise. ΔW entries smaller
    than that can vanish. merge_and_unload (dequant(W₄) + ΔW in float) has no such error.

    Afterwards `model.lora_configs` is removed and the state dict has the keys of the quantised model
    before apply_lora. Every new layer is built before any is swapped in: on error nothing changed.
    Raises:
        ValueError: the model has no LoRA layer over a LinearNF4 (use merge_and_unload), or a merged
            weight is not finite (the layer is named).
    """
    layers = list(lora_layers(model))
    if not any(isinstance(layer.base, LinearNF4) for _, layer in layers):
        raise ValueError(f"{type(model).__name__} has no LoRA layer over a LinearNF4 base; "
                         "merge_and_requantize keeps 4-bit bases 4-bit, use merge_and_unload(model) for float ones")
    staged = []
    for name, layer in layers:
        try:
            new = requantized_layer(layer) if isinstance(layer.base, LinearNF4) else layer.to_plain()
        except ValueError as e:
            raise ValueError(f"cannot merge {name!r}: {e}; the model was left unchanged") from None
        staged.append((name, new))
    for name, new in staged:
        set_module(model, name, new)
    if hasattr(model, "lora_configs"):
        del model.lora_configs
    return model
