"""LoRALinear: a frozen linear layer plus a trainable low-rank update (Hu et al., 2021, §4.1).

    h = W0 x + ΔW x,   ΔW = (α / r) B A,   A (r, d_in), B (d_out, r)

The base is an nn.Linear, or any layer that exposes `in_features`, `out_features`, `bias` and
`dequantize_weight(dtype=None) -> (d_out, d_in) tensor` (the NF4 layer of QLoRA). The base is
never imported here: it is recognised by those attributes, so this module works for any model.

Shape legend:
    d_in   base.in_features      d_out  base.out_features      r  rank
    ...    any leading dimensions (batch, time)
"""

import math
import warnings

import torch
import torch.nn as nn

from lora.checks import check_bool, check_float, check_int


def lora_scaling(rank, alpha, use_rslora=False):
    """The factor in front of B A: α / r (LoRA §4.1), or α / √r with rsLoRA (Kalajdzievski, 2023).

    rsLoRA's argument: with α / r the update's magnitude shrinks as r grows, so larger ranks learn
    slower; α / √r keeps it rank-stable. This is the only place the factor is computed.
    """
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def check_lora_hparams(rank, alpha, dropout, use_rslora=False):
    """Raise ValueError naming the first bad hyperparameter and what is allowed."""
    check_int("rank", rank)
    check_float("alpha", alpha)
    check_float("dropout", dropout, 0.0, 1.0, low_open=False)
    check_bool("use_rslora", use_rslora)


def is_quantized_linear(module):
    """True for a layer that quacks like a quantized linear: sizes, bias and dequantize_weight()."""
    return (not isinstance(module, nn.Linear) and callable(getattr(module, "dequantize_weight", None))
            and all(hasattr(module, a) for a in ("in_features", "out_features", "bias")))


class LoRALinear(nn.Module):
    """x ↦ W0 x + (α / r) B A x with W0 frozen and only A, B trained (LoRA §4.1).

    Args:
        base: the layer to adapt, an nn.Linear or a quantized linear layer (see module docstring).
            Its parameters are frozen here.
        rank: r, the rank of the update; a positive integer.
        alpha: α, a positive number; the update is scaled by α / r (α / √r with rsLoRA).
        dropout: probability of dropping inputs of the low-rank path, in [0, 1); training mode only.
        use_rslora: scale by α / √r instead of α / r (Kalajdzievski, 2023).
    Raises:
        ValueError: a bad hyperparameter, or a base that is not a linear layer.
    """

    def __init__(self, base, rank, alpha, dropout=0.0, use_rslora=False):
        super().__init__()
        check_lora_hparams(rank, alpha, dropout, use_rslora)
        if not (isinstance(base, nn.Linear) or is_quantized_linear(base)):
            raise ValueError(f"LoRALinear needs an nn.Linear or a quantized linear layer, got {type(base).__name__}")
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.use_rslora = rank, alpha, use_rslora
        self.scaling = lora_scaling(rank, alpha, use_rslora)
        kw = _factory_kwargs(base)
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **kw))  # (r, d_in)
        self.lora_B = nn.Parameter(torch.empty(self.out_features, rank, **kw))  # (d_out, r)
        self.reset_lora_parameters()
        # p == 0 is the usual case: Identity skips a pointless dropout call (PEFT does the same)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False    # True while ΔW is added into base.weight
        self.disabled = False  # True inside disable_lora(): forward is the base alone
        for p in base.parameters():
            p.requires_grad_(False)

    def reset_lora_parameters(self):
        """A ~ Kaiming-uniform(a=√5), B = 0, so ΔW = B A = 0 and training starts at the base model.

        B, not A, is zero. With g = ∂L/∂h, B's gradient (α/r) g (A x)ᵀ is nonzero because A is random,
        so B moves on step 1; A's gradient (α/r) Bᵀ g xᵀ is zero until then. Were both zero, neither
        would ever move.
        The paper draws A from a Gaussian; we use nn.Linear's default Kaiming-uniform, as loralib and
        PEFT do, so adapters initialise like theirs.
        """
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def delta_weight(self):
        """ΔW = (α / r) B A, shape (d_out, d_in) like nn.Linear.weight (LoRA §4.1)."""
        return self.scaling * (self.lora_B @ self.lora_A)  # (d_out, r) @ (r, d_in) -> (d_out, d_in)

    def forward(self, x):
        """(..., d_in) -> (..., d_out): base(x) + (α / r) · dropout(x) Aᵀ Bᵀ.

        The low-rank path costs r·(d_in + d_out) multiply-adds per token and never builds ΔW. It runs
        in x's dtype, so fp32 adapters work with a bf16 base or under autocast. The scaling multiplies
        the r-wide intermediate rather than the d_out-wide result: the same product, but a pass over
        r numbers per token instead of d_out, in forward and again in backward.
        """
        out = self.base(x)
        if self.merged or self.disabled:  # merged: ΔW already sits in base.weight
            return out
        A, B = self.lora_A.to(x.dtype), self.lora_B.to(x.dtype)
        h = (self.dropout(x) @ A.T) * self.scaling  # (..., d_in) -> (..., r)
        return out + h @ B.T                         # (..., r) -> (..., d_out)

    def merge(self):
        """W ← W + ΔW in place, so forward costs what the base alone costs (LoRA §4.1, no inference latency).

        Raises:
            ValueError: the base is quantized (use merge_and_unload), or W + ΔW is not finite;
                the weight is left unchanged.
        """
        if self.merged:
            warnings.warn("LoRALinear.merge(): already merged; nothing changed", stacklevel=2)
            return
        if not isinstance(self.base, nn.Linear):
            raise ValueError(f"cannot merge into a quantized {type(self.base).__name__}: W + ΔW would have to be "
                             "re-quantized; merge_and_unload(model) returns float nn.Linear layers holding dequant(W) + ΔW")
        with torch.no_grad():
            w = self._checked_sum(self.base.weight, +1)
            self.base.weight.copy_(w)
        self.merged = True

    def unmerge(self):
        """W ← W − ΔW, undoing merge(); exact up to floating-point rounding."""
        if not self.merged:
            warnings.warn("LoRALinear.unmerge(): not merged; nothing changed", stacklevel=2)
            return
        with torch.no_grad():
            self.base.weight.copy_(self._checked_sum(self.base.weight, -1))
        self.merged = False

    @torch.no_grad()
    def to_linear(self):
        """A new plain nn.Linear computing what this layer computes, with ΔW folded into its weight.

        For an nn.Linear base the weight is W + ΔW; for a quantized base it is dequant(W) + ΔW, a float
        layer (re-quantizing it would add a second rounding error). Nothing here is modified.
        """
        if isinstance(self.base, nn.Linear):
            w = self.base.weight.detach().clone() if self.merged else self._checked_sum(self.base.weight, +1)
        else:
            w = self._checked_sum(self.base.dequantize_weight(), +1)
        bias = self.base.bias
        linear = nn.Linear(self.in_features, self.out_features, bias=bias is not None, device=w.device, dtype=w.dtype)
        linear.weight.copy_(w)
        if bias is not None:
            linear.bias.copy_(bias)
        return linear.requires_grad_(False)  # stays frozen, like the base it replaces

    def _checked_sum(self, weight, sign):
        out = weight + sign * self.delta_weight().to(weight.dtype)
        if not torch.isfinite(out).all():
            raise ValueError(f"W {'+' if sign > 0 else '-'} ΔW has non-finite entries (max |ΔW| = "
                             f"{self.delta_weight().abs().max().item():.3g}); the weight was left unchanged")
        return out

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"alpha={self.alpha}, scaling={self.scaling:.4g}, use_rslora={self.use_rslora}, merged={self.merged}")


def _factory_kwargs(base):
    """Device and dtype for A and B: those of the base weight; float32 beside a quantized (integer) weight."""
    if isinstance(base, nn.Linear):
        return dict(device=base.weight.device, dtype=base.weight.dtype)
    tensors = [*base.parameters(), *base.buffers()]
    device = tensors[0].device if tensors else None
    return dict(device=device, dtype=torch.float32)  # QLoRA trains the adapters in higher precision than W
