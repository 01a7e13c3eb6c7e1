"""LoRAAdapter: one adapter's low-rank path, and with DoRA its magnitude vector (Hu et al., 2021, §4.1;
Liu et al., 2024, §4.1).

    LoRA   h = W0 x + s B A x,                     s = α / r (α / √r with rsLoRA)
    DoRA   h = m ⊙ (W0 + s B A) x / ‖W0 + s B A‖   (the norm per output row; lora.dora has the math)

A LoRALinear (lora.layer) holds its adapters by name; this module holds what one adapter owns: A, B,
the scaling, its dropout and, with DoRA, the trainable magnitude m, plus the adapter-name rule. The DoRA formulas themselves live in lora.dora; the methods here only feed them.

Shape legend:
    d_in / d_out  the adapted layer's input / output sizes      r  rank
    ...           any leading dimensions (batch, time)
"""

import math
import re

import torch
import torch.nn as nn

from lora.backward import lora_linear
from lora.dora import dora_forward, dora_magnitude_init, dora_unmerge_weight, dora_weight, weight_norm


def lora_scaling(rank, alpha, use_rslora=False):
    """The factor in front of B A: α / r (LoRA §4.1), or α / √r with rsLoRA (Kalajdzievski, 2023).

    rsLoRA's argument: with α / r the update's magnitude shrinks as r grows, so larger ranks learn
    slower; α / √r keeps it rank-stable. This is the only place the factor is computed.
    """
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def is_quantized_linear(module):
    """True for a layer that quacks like a quantized linear: sizes, bias and dequantize_weight()."""
    return (not isinstance(module, nn.Linear) and callable(getattr(module, "dequantize_weight", None))
            and all(hasattr(module, a) for a in ("in_features", "out_features", "bias")))


_ADAPTER_NAME = re.compile(r"[A-Za-z0-9_-]+")


def check_adapter_name(name):
    """An adapter name is a non-empty string of letters, digits, "_" and "-".

    It becomes a module key (no "."), a directory name when saved (no "/"), and must not shadow an
    attribute of nn.ModuleDict ("keys", "items", "training", ...).
    """
    if not isinstance(name, str) or not _ADAPTER_NAME.fullmatch(name) or hasattr(nn.ModuleDict(), name):
        raise ValueError(f"adapter_name={name!r}: use letters, digits, '_' and '-' (e.g. 'default'), "
                         "not the name of an nn.ModuleDict attribute")
    return name


class LoRAAdapter(nn.Module):
    """One adapter's low-rank path: x ↦ (α / r) B A dropout(x) (LoRA §4.1); with use_dora also m (DoRA §4.1).

    Built by a LoRA layer from a LoraConfig (lora.config), which has checked every value already.

    Args:
        d_in, d_out: sizes of the adapted layer.
        rank: r, the rank of the update.
        alpha: α; the update is scaled by α / r (α / √r with rsLoRA).
        dropout: probability of dropping inputs of the low-rank path, in [0, 1); training mode only.
        use_rslora: scale by α / √r instead of α / r (Kalajdzievski, 2023).
        use_dora: add a trainable magnitude vector `lora_magnitude_vector` (d_out,), PEFT's name; it
            holds ones until init_magnitude(W0) sets it to ‖W0 + s B A‖ (the layer does that).
        device, dtype: of A and B (and m).
    """

    def __init__(self, d_in, d_out, rank, alpha, dropout=0.0, use_rslora=False, use_dora=False, device=None,
                 dtype=None):
        super().__init__()
        self.rank, self.alpha, self.use_rslora, self.use_dora = rank, alpha, use_rslora, use_dora
        self.scaling = lora_scaling(rank, alpha, use_rslora)
        self.lora_A = nn.Parameter(torch.empty(rank, d_in, device=device, dtype=dtype))   # (r, d_in)
        self.lora_B = nn.Parameter(torch.empty(d_out, rank, device=device, dtype=dtype))  # (d_out, r)
        if use_dora:
            self.lora_magnitude_vector = nn.Parameter(torch.ones(d_out, device=device, dtype=dtype))  # (d_out,)
        self.dora_norm = None  # ‖W0 + s B A‖ (d_out,) cached by a DoRA merge, for the unmerge (as PEFT caches it)
        self.reset_parameters()
        # p == 0 is the usual case: Identity skips a pointless dropout call (PEFT does the same)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def reset_parameters(self):
        """A ~ Kaiming-uniform(a=√5), B = 0, so ΔW = B A = 0 and training starts at the base model.

        B, not A, is zero. With g = ∂L/∂h, B's gradient (α/r) g (A x)ᵀ is nonzero because A is random,
        so B moves on step 1; A's gradient (α/r) Bᵀ g xᵀ is zero until then. Were both zero, neither
        would ever move.
        The paper draws A from a Gaussian; we use nn.Linear's default Kaiming-uniform, as loralib and
        PEFT do, so adapters initialise like theirs. lora.init has the other initialisations.
        """
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def factors(self):
        """(A, B) with ΔW = s B A: the Parameters adapter arithmetic (lora.combine) reads and writes."""
        return self.lora_A, self.lora_B

    def delta_weight(self):
        """ΔW = (α / r) B A, shape (d_out, d_in) like nn.Linear.weight (LoRA §4.1)."""
        return self.scaling * (self.lora_B @ self.lora_A)  # (d_out, r) @ (r, d_in) -> (d_out, d_in)

    def forward(self, x):
        """(..., d_in) -> (..., d_out): (α / r) · dropout(x) Aᵀ Bᵀ, never building ΔW.

        It costs r·(d_in + d_out) multiply-adds per token and runs in x's dtype, so fp32 adapters work
        with a bf16 base or under autocast. The scaling multiplies the r-wide intermediate rather than
        the d_out-wide result: the same product, but a pass over r numbers per token instead of d_out.
        """
        A, B = self.lora_A.to(x.dtype), self.lora_B.to(x.dtype)
        h = (self.dropout(x) @ A.T) * self.scaling  # (..., d_in) -> (..., r)
        return h @ B.T                               # (..., r) -> (..., d_out)

    def runs_fused(self, x, weight):
        """True when fused_output applies: a plain (not DoRA) adapter, x, W0, A and B in one dtype, and
        no autocast on x's device (autocast would change dtypes inside the product)."""
        return (not self.use_dora and x.dtype == weight.dtype == self.lora_A.dtype == self.lora_B.dtype
                and not torch.is_autocast_enabled(x.device.type))

    def fused_output(self, x, weight, bias):
        """(..., d_in) -> (..., d_out): the whole layer, x W0ᵀ + b + s · dropout(x) Aᵀ Bᵀ, in one
        autograd node with LoRA's hand-written backward (lora.backward). Dropout stays a separate op on
        the adapter's input, so autograd carries its mask."""
        dropped = None if isinstance(self.dropout, nn.Identity) or not self.training else self.dropout(x)
        return lora_linear(x, weight, bias, self.lora_A, self.lora_B, self.scaling, dropped)

    # DoRA: every formula is in lora.dora; these methods pass it this adapter's tensors
    @torch.no_grad()
    def init_magnitude(self, weight):
        """m ← ‖W0 + s B A‖ per output row (DoRA §4.1); with B = 0 that is ‖W0‖. `weight` is W0 (d_out, d_in)."""
        w = weight.detach().to(self.lora_A.dtype)
        self.lora_magnitude_vector.copy_(dora_magnitude_init(w, self.delta_weight().detach()))

    def dora_output(self, x, weight, bias, base_out):
        """(..., d_in) -> (..., d_out): the DoRA layer's whole output (lora.dora.dora_forward; norm detached, §4.3).

        Dropout applies to the low-rank and magnitude corrections only, as in PEFT (see dora_forward).
        """
        drop = self.dropout if self.training and not isinstance(self.dropout, nn.Identity) else None
        return dora_forward(x, weight, bias, self.lora_A, self.lora_B, self.scaling, self.lora_magnitude_vector,
                            dropout=drop, base_out=base_out)

    def dora_merged(self, weight):
        """W' = m (W0 + ΔW) / ‖W0 + ΔW‖ for W0 = `weight` (DoRA §4.1, Eq. 5), in weight's dtype."""
        delta = self.delta_weight().detach().to(weight.dtype)
        return dora_weight(weight, delta, self.lora_magnitude_vector.detach().to(weight.dtype))

    def merge_norm(self, weight):
        """‖W0 + ΔW‖ per output row (d_out,) for W0 = `weight`: what unmerge needs, kept at merge time."""
        return weight_norm(weight + self.delta_weight().detach().to(weight.dtype))

    def dora_unmerged(self, merged):
        """W0 = W' / (m / norm) − ΔW with the norm cached at merge time (lora.dora.dora_unmerge_weight)."""
        delta = self.delta_weight().detach().to(merged.dtype)
        m = self.lora_magnitude_vector.detach().to(merged.dtype)
        return dora_unmerge_weight(merged, delta, m, self.dora_norm.to(merged.dtype))

    def extra_repr(self):
        return (f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling:.4g}, use_rslora={self.use_rslora}"
                + (", use_dora=True" if self.use_dora else ""))
