"""LoRALinear: a frozen linear layer plus a trainable low-rank update (Hu et al., 2021, §4.1).

    h = W0 x + ΔW x,   ΔW = (α / r) B A,   A (r, d_in), B (d_out, r)

One LoRAAdapter holds A, B and α / r. A LoRALinear holds its adapters by name (usually just
"default", which `layer.lora_A` / `layer.lora_B` read) and adds the ΔW of the active ones, as PEFT
does; lora.adapters switches, deletes and lists them model-wide.

The base is an nn.Linear, or any layer that exposes `in_features`, `out_features`, `bias` and
`dequantize_weight(dtype=None) -> (d_out, d_in) tensor` (the NF4 layer of QLoRA). The base is
never imported here: it is recognised by those attributes, so this module works for any model.

Shape legend:
    d_in   base.in_features      d_out  base.out_features      r  rank
    ...    any leading dimensions (batch, time)
"""

import math
import re
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
    """One adapter's low-rank path: x ↦ (α / r) B A dropout(x) (LoRA §4.1).

    Args:
        d_in, d_out: sizes of the adapted layer.
        rank: r, the rank of the update; a positive integer.
        alpha: α, a positive number; the update is scaled by α / r (α / √r with rsLoRA).
        dropout: probability of dropping inputs of the low-rank path, in [0, 1); training mode only.
        use_rslora: scale by α / √r instead of α / r (Kalajdzievski, 2023).
        device, dtype: of A and B.
    Raises:
        ValueError: a bad hyperparameter.
    """

    def __init__(self, d_in, d_out, rank, alpha, dropout=0.0, use_rslora=False, device=None, dtype=None):
        super().__init__()
        check_lora_hparams(rank, alpha, dropout, use_rslora)
        self.rank, self.alpha, self.use_rslora = rank, alpha, use_rslora
        self.scaling = lora_scaling(rank, alpha, use_rslora)
        self.lora_A = nn.Parameter(torch.empty(rank, d_in, device=device, dtype=dtype))   # (r, d_in)
        self.lora_B = nn.Parameter(torch.empty(d_out, rank, device=device, dtype=dtype))  # (d_out, r)
        self.reset_parameters()
        # p == 0 is the usual case: Identity skips a pointless dropout call (PEFT does the same)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def reset_parameters(self):
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
        """(..., d_in) -> (..., d_out): (α / r) · dropout(x) Aᵀ Bᵀ, never building ΔW.

        It costs r·(d_in + d_out) multiply-adds per token and runs in x's dtype, so fp32 adapters work
        with a bf16 base or under autocast. The scaling multiplies the r-wide intermediate rather than
        the d_out-wide result: the same product, but a pass over r numbers per token instead of d_out.
        """
        A, B = self.lora_A.to(x.dtype), self.lora_B.to(x.dtype)
        h = (self.dropout(x) @ A.T) * self.scaling  # (..., d_in) -> (..., r)
        return h @ B.T                               # (..., r) -> (..., d_out)

    def extra_repr(self):
        return f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling:.4g}, use_rslora={self.use_rslora}"


class LoRALinear(nn.Module):
    """x ↦ W0 x + (α / r) B A x with W0 frozen and only A, B trained (LoRA §4.1).

    The layer holds its adapters by name in `self.adapters`; almost always there is one, "default",
    and `layer.lora_A`, `layer.lora_B`, `layer.scaling`, ... are that adapter's. With several, forward
    adds the ΔW of each name in `active_adapters` (PEFT's rule): h = W0 x + Σ_active (α_i / r_i) B_i A_i x.

    Args:
        base: the layer to adapt, an nn.Linear or a quantized linear layer (see module docstring).
            Its parameters are frozen here.
        rank, alpha, dropout, use_rslora: of the first adapter; see LoRAAdapter.
        adapter_name: the first adapter's name; it is active.
    Raises:
        ValueError: a bad hyperparameter or name, or a base that is not a linear layer.
    """

    def __init__(self, base, rank, alpha, dropout=0.0, use_rslora=False, adapter_name="default"):
        super().__init__()
        if not (isinstance(base, nn.Linear) or is_quantized_linear(base)):
            raise ValueError(f"LoRALinear needs an nn.Linear or a quantized linear layer, got {type(base).__name__}")
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.adapters = nn.ModuleDict()  # name -> LoRAAdapter
        self.active_adapters = []        # names whose ΔW forward adds
        self.merged_adapters = []        # names whose ΔW sits in base.weight (set by merge)
        self.disabled = False            # True inside disable_lora(): forward is the base alone
        self.add_adapter(adapter_name, rank, alpha, dropout, use_rslora)
        self.set_active([adapter_name])
        for p in base.parameters():
            p.requires_grad_(False)

    # the single-adapter view: what the paper calls A, B and α / r
    @property
    def adapter(self):
        """The layer's adapter when it holds exactly one; several need layer.adapters[name]."""
        if len(self.adapters) != 1:
            raise ValueError(f"this layer holds the adapters {list(self.adapters)}; "
                             "pick one with layer.adapters[name]")
        return next(iter(self.adapters.values()))

    @property
    def lora_A(self):
        return self.adapter.lora_A  # (r, d_in)

    @property
    def lora_B(self):
        return self.adapter.lora_B  # (d_out, r)

    @property
    def scaling(self):
        return self.adapter.scaling

    @property
    def rank(self):
        return self.adapter.rank

    @property
    def alpha(self):
        return self.adapter.alpha

    @property
    def use_rslora(self):
        return self.adapter.use_rslora

    @property
    def dropout(self):
        return self.adapter.dropout

    @property
    def merged(self):
        """True while ΔW of the merged adapters is added into base.weight."""
        return bool(self.merged_adapters)

    def add_adapter(self, name, rank, alpha, dropout=0.0, use_rslora=False):
        """Add a new, inactive and frozen adapter `name` (zero ΔW until trained); see LoRAAdapter."""
        check_adapter_name(name)
        if name in self.adapters:
            raise ValueError(f"adapter {name!r} exists already; its layer holds {list(self.adapters)}")
        kw = _factory_kwargs(self.base)
        adapter = LoRAAdapter(self.in_features, self.out_features, rank, alpha, dropout, use_rslora, **kw)
        self.adapters[name] = adapter.requires_grad_(False)

    def set_active(self, names):
        """Make exactly `names` active (in this order) and trainable; the other adapters are frozen."""
        unknown = [n for n in names if n not in self.adapters]
        if unknown:
            raise ValueError(f"unknown adapter {unknown[0]!r}; this layer holds {list(self.adapters)}")
        if self.merged and list(names) != self.merged_adapters:
            raise ValueError(f"adapters {self.merged_adapters} are merged; unmerge before switching adapters")
        self.active_adapters = list(names)
        for name, adapter in self.adapters.items():
            adapter.requires_grad_(name in names)

    def delete_adapter(self, name):
        """Remove adapter `name` (it must not be merged); it stops being active."""
        if name in self.merged_adapters:
            raise ValueError(f"adapter {name!r} is merged; unmerge before deleting it")
        del self.adapters[name]
        self.active_adapters = [n for n in self.active_adapters if n != name]

    def delta_weight(self, names=None):
        """ΔW = Σ_i (α_i / r_i) B_i A_i over the active adapters (or `names`), shape (d_out, d_in) (LoRA §4.1).

        With one adapter this is (α / r) B A.
        """
        names = self.active_adapters if names is None else names
        if not names:
            raise ValueError("no adapter is active on this layer, so ΔW is zero")
        return sum(self.adapters[n].delta_weight() for n in names)

    def forward(self, x):
        """(..., d_in) -> (..., d_out): base(x) + Σ_active (α / r) · dropout(x) Aᵀ Bᵀ (see LoRAAdapter.forward)."""
        out = self.base(x)
        if self.merged or self.disabled:  # merged: ΔW already sits in base.weight
            return out
        for name in self.active_adapters:
            out = out + self.adapters[name](x)
        return out

    def merge(self):
        """W ← W + ΔW of the active adapters, in place, so forward costs what the base alone costs
        (LoRA §4.1, no inference latency). A layer without an active adapter is left as it is.

        Raises:
            ValueError: the base is quantized (use merge_and_unload), or W + ΔW is not finite;
                the weight is left unchanged.
        """
        if self.merged:
            warnings.warn("LoRALinear.merge(): already merged; nothing changed", stacklevel=2)
            return
        if not self.active_adapters:
            return
        if not isinstance(self.base, nn.Linear):
            raise ValueError(f"cannot merge into a quantized {type(self.base).__name__}: W + ΔW would have to be "
                             "re-quantized; merge_and_unload(model) returns float nn.Linear layers holding dequant(W) + ΔW")
        with torch.no_grad():
            self.base.weight.copy_(self._checked_sum(self.base.weight, +1, self.active_adapters))
        self.merged_adapters = list(self.active_adapters)

    def unmerge(self):
        """W ← W − ΔW of the merged adapters, undoing merge(); exact up to floating-point rounding."""
        if not self.merged:
            warnings.warn("LoRALinear.unmerge(): not merged; nothing changed", stacklevel=2)
            return
        with torch.no_grad():
            self.base.weight.copy_(self._checked_sum(self.base.weight, -1, self.merged_adapters))
        self.merged_adapters = []

    @torch.no_grad()
    def to_linear(self):
        """A new plain nn.Linear computing what this layer computes, with the active ΔW folded into its weight.

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

    def _checked_sum(self, weight, sign, names=None):
        names = self.active_adapters if names is None else names
        if not names:
            return weight.detach().clone()
        delta = self.delta_weight(names).to(weight.dtype)
        out = weight + sign * delta
        if not torch.isfinite(out).all():
            raise ValueError(f"W {'+' if sign > 0 else '-'} ΔW has non-finite entries (max |ΔW| = "
                             f"{delta.abs().max().item():.3g}); the weight was left unchanged")
        return out

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"active={self.active_adapters}, merged={self.merged}")


def _factory_kwargs(base):
    """Device and dtype for A and B: those of the base weight; float32 beside a quantized (integer) weight."""
    if isinstance(base, nn.Linear):
        return dict(device=base.weight.device, dtype=base.weight.dtype)
    tensors = [*base.parameters(), *base.buffers()]
    device = tensors[0].device if tensors else None
    return dict(device=device, dtype=torch.float32)  # QLoRA trains the adapters in higher precision than W
