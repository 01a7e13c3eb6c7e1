"""LoRALinear: a frozen linear layer plus a trainable low-rank update (Hu et al., 2021, §4.1).

    h = W0 x + ΔW x,   ΔW = (α / r) B A,   A (r, d_in), B (d_out, r)

One LoRAAdapter (lora.low_rank) holds A, B and α / r, and with DoRA the magnitude m. A LoRALinear holds its adapters by name (usually just
"default", which `layer.lora_A` / `layer.lora_B` read) and adds the ΔW of the active ones, as PEFT
does; lora.adapters switches, deletes and lists them model-wide.

The base is an nn.Linear, or any layer that exposes `in_features`, `out_features`, `bias` and
`dequantize_weight(dtype=None) -> (d_out, d_in) tensor` (the NF4 layer of QLoRA). The base is
never imported here: it is recognised by those attributes, so this module works for any model.

Shape legend:
    d_in   base.in_features      d_out  base.out_features      r  rank
    ...    any leading dimensions (batch, time)
"""

import warnings

import torch
import torch.nn as nn

from lora.low_rank import LoRAAdapter, check_adapter_name, check_lora_hparams, is_quantized_linear, lora_scaling

__all__ = ["LoRAAdapter", "LoRALinear", "check_adapter_name", "check_lora_hparams", "is_quantized_linear",
           "lora_scaling"]


class LoRALinear(nn.Module):
    """x ↦ W0 x + (α / r) B A x with W0 frozen and only A, B trained (LoRA §4.1).

    The layer holds its adapters by name in `self.adapters`; almost always there is one, "default",
    and `layer.lora_A`, `layer.lora_B`, `layer.scaling`, ... are that adapter's. With several, forward
    adds the ΔW of each name in `active_adapters` (PEFT's rule): h = W0 x + Σ_active (α_i / r_i) B_i A_i x.

    Args:
        base: the layer to adapt, an nn.Linear or a quantized linear layer (see module docstring).
            Its parameters are frozen here.
        rank, alpha, dropout, use_rslora, use_dora: of the first adapter; see LoRAAdapter.
        adapter_name: the first adapter's name; it is active.
    A DoRA adapter is never active beside another one: PEFT adds each DoRA adapter's correction to the
    running output, so the result depends on their order, and W' = m (W0 + ΔW) / ‖W0 + ΔW‖ has no
    agreed sum; set_active refuses the mix instead.
    Raises:
        ValueError: a bad hyperparameter or name, or a base that is not a linear layer.
    """

    def __init__(self, base, rank, alpha, dropout=0.0, use_rslora=False, adapter_name="default", use_dora=False):
        super().__init__()
        if not (isinstance(base, nn.Linear) or is_quantized_linear(base)):
            raise ValueError(f"LoRALinear needs an nn.Linear or a quantized linear layer, got {type(base).__name__}")
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.adapters = nn.ModuleDict()  # name -> LoRAAdapter
        self.active_adapters = []        # names whose ΔW forward adds
        self.merged_adapters = []        # names whose ΔW sits in base.weight (set by merge)
        self.disabled = False            # True inside disable_lora(): forward is the base alone
        self.tied_to = ()                # modules sharing base.weight (set by apply_lora); merge refuses then
        self.add_adapter(adapter_name, rank, alpha, dropout, use_rslora, use_dora)
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

    def base_weight(self):
        """W0 as a float (d_out, d_in) tensor: the base's weight, or a quantized base's dequantize_weight()."""
        return self.base.weight if isinstance(self.base, nn.Linear) else self.base.dequantize_weight()

    def add_adapter(self, name, rank, alpha, dropout=0.0, use_rslora=False, use_dora=False):
        """Add a new, inactive and frozen adapter `name` (zero ΔW until trained); see LoRAAdapter.

        A DoRA adapter's magnitude starts at ‖W0‖ (DoRA §4.1), W0 dequantized for an NF4 base (QDoRA).
        """
        check_adapter_name(name)
        if name in self.adapters:
            raise ValueError(f"adapter {name!r} exists already; its layer holds {list(self.adapters)}")
        kw = _factory_kwargs(self.base)
        adapter = LoRAAdapter(self.in_features, self.out_features, rank, alpha, dropout, use_rslora, **kw,
                              use_dora=use_dora)
        if use_dora:
            adapter.init_magnitude(self.base_weight())
        self.adapters[name] = adapter.requires_grad_(False)

    def set_active(self, names):
        """Make exactly `names` active (in this order) and trainable; the other adapters are frozen."""
        unknown = [n for n in names if n not in self.adapters]
        if unknown:
            raise ValueError(f"unknown adapter {unknown[0]!r}; this layer holds {list(self.adapters)}")
        if self.merged and list(names) != self.merged_adapters:
            raise ValueError(f"adapters {self.merged_adapters} are merged; unmerge before switching adapters")
        check_dora_alone(names, [n for n in names if self.adapters[n].use_dora])
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
            adapter = self.adapters[name]
            if adapter.use_dora:  # the only active adapter (set_active): out is base(x) here
                out = adapter.dora_output(x, self.base_weight(), self.base.bias, out)
            else:
                out = out + adapter(x)
        return out

    def merge(self):
        """W ← W + ΔW of the active adapters, in place, so forward costs what the base alone costs
        (LoRA §4.1, no inference latency). A layer without an active adapter is left as it is.

        A DoRA adapter merges as W ← m (W + ΔW) / ‖W + ΔW‖ (DoRA §4.1), the norm kept for unmerge.
        Raises:
            ValueError: the base is quantized (use merge_and_unload), its weight is shared with another
                module (self.tied_to; lora.tied.untie_weight first), or the merged weight is not finite;
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
        if self.tied_to and self.base.weight is self._tied_weight[0]:
            raise ValueError(f"the base weight is shared with {list(self.tied_to)}; merging would change them too. "
                             "Call lora.untie_weight(model, '<this layer>.base') first, or keep the adapter unmerged")
        with torch.no_grad():
            self.base.weight.copy_(self._checked_sum(self.base.weight, +1, self.active_adapters, cache_norm=True))
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
        if isinstance(self.base, nn.Linear):  # keep the base weight's memory layout (its strides), not only its values
            linear.weight = nn.Parameter(torch.empty_like(self.base.weight, dtype=w.dtype))
        linear.weight.copy_(w)
        if bias is not None:
            linear.bias.copy_(bias)
        return linear.requires_grad_(False)  # stays frozen, like the base it replaces

    def mark_tied(self, names, weight):
        """Record that `weight` (the base weight now) is shared with the modules `names`: merge() then refuses."""
        self.tied_to = tuple(names)
        self._tied_weight = [weight]  # in a list, so nn.Module does not register it a second time

    def _checked_sum(self, weight, sign, names=None, cache_norm=False):
        """W ± ΔW of `names`; for a DoRA adapter its merged weight, or the weight it was merged from."""
        names = self.active_adapters if names is None else names
        if not names:
            return weight.detach().clone()
        dora = [self.adapters[n] for n in names if self.adapters[n].use_dora]
        if dora and sign > 0:
            out, norm = dora[0].dora_merged(weight.detach())
            if cache_norm:
                dora[0].dora_norm = norm
        elif dora:
            out = dora[0].dora_unmerged(weight.detach())
        else:
            out = weight + sign * self.delta_weight(names).to(weight.dtype)
        if not torch.isfinite(out).all():
            raise ValueError(f"the merged weight (W {'+' if sign > 0 else '-'} ΔW of {names}) has non-finite "
                             "entries; the weight was left unchanged")
        return out

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"active={self.active_adapters}, merged={self.merged}")


def check_dora_alone(names, dora_names):
    """Raise ValueError if a DoRA adapter would be active beside another adapter (see LoRALinear)."""
    if dora_names and len(names) > 1:
        raise ValueError(f"adapters {list(names)} include the DoRA adapter {dora_names[0]!r}; a DoRA adapter "
                         "can only be active alone (merge_and_unload it first, or activate it alone)")


def _factory_kwargs(base):
    """Device and dtype for A and B: those of the base weight; float32 beside a quantized (integer) weight."""
    if isinstance(base, nn.Linear):
        return dict(device=base.weight.device, dtype=base.weight.dtype)
    tensors = [*base.parameters(), *base.buffers()]
    device = tensors[0].device if tensors else None
    return dict(device=device, dtype=torch.float32)  # QLoRA trains the adapters in higher precision than W
