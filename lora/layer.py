"""LoRALinear: a frozen linear layer plus trainable low-rank updates (Hu et al., 2021, §4.1).

    h = W0 x + ΔW x,   ΔW = (α / r) B A,   A (r, d_in), B (d_out, r)

One LoRAAdapter (lora.adapter) holds A, B and α / r, and with DoRA the magnitude m. A LoRALinear
keeps its adapters by name, usually just "default" (which `layer.lora_A` / `layer.lora_B` read), and
adds the ΔW of the active ones, as PEFT does; lora.base_layer has the contract it shares with
LoRAEmbedding, and lora.switching switches, deletes and lists adapters model-wide.

The base is an nn.Linear, or any layer that exposes `in_features`, `out_features`, `bias` and
`dequantize_weight(dtype=None) -> (d_out, d_in) tensor` (the NF4 layer of QLoRA). The base is
never imported here: it is recognised by those attributes, so this module works for any model.

Shape legend:
    d_in   base.in_features      d_out  base.out_features      r  rank
    ...    any leading dimensions (batch, time)
"""

import torch
import torch.nn as nn

from lora.adapter import LoRAAdapter, is_quantized_linear
from lora.base_layer import LoRALayer, finite_weight
from lora.config import config_from_keywords


class LoRALinear(LoRALayer):
    """x ↦ W0 x + (α / r) B A x with W0 frozen and only A, B trained (LoRA §4.1).

    With several active adapters forward adds each one's ΔW (PEFT's rule):
    h = W0 x + Σ_active (α_i / r_i) B_i A_i x. A DoRA adapter is never active beside another one:
    PEFT adds each DoRA adapter's correction to the running output, so the result depends on their
    order, and W' = m (W0 + ΔW) / ‖W0 + ΔW‖ has no agreed sum; set_active refuses the mix instead.

    Args:
        base: the layer to adapt, an nn.Linear or a quantized linear layer (see module docstring).
            Its parameters are frozen here.
        rank, alpha, dropout, use_rslora, use_dora: the first adapter's settings (lora.config.LoraConfig's
            r, lora_alpha, lora_dropout, ...), checked there; rank=None builds the layer without an
            adapter (lora.inject.apply_lora adds them by name with add_adapter).
        adapter_name: the first adapter's name; it is active.
    Raises:
        ValueError: a bad setting or name, or a base that is not a linear layer.
    """

    def __init__(self, base, rank=None, alpha=16, dropout=0.0, use_rslora=False, adapter_name="default",
                 use_dora=False):
        if not (isinstance(base, nn.Linear) or is_quantized_linear(base)):
            raise ValueError(f"LoRALinear needs an nn.Linear or a quantized linear layer, got {type(base).__name__}")
        super().__init__(base)
        self.in_features, self.out_features = base.in_features, base.out_features
        if rank is not None:
            config = config_from_keywords(rank=rank, alpha=alpha, dropout=dropout, use_rslora=use_rslora, use_dora=use_dora)
            self.add_adapter(adapter_name, config)
            self.set_active([adapter_name])

    # the single-adapter view: what the paper calls A, B and α / r
    @property
    def lora_A(self):
        return self.adapter.lora_A  # (r, d_in)

    @property
    def lora_B(self):
        return self.adapter.lora_B  # (d_out, r)

    @property
    def dropout(self):
        return self.adapter.dropout

    def base_weight(self):
        """W0 as a float (d_out, d_in) tensor: the base's weight, or a quantized base's dequantize_weight()."""
        return self.base.weight if isinstance(self.base, nn.Linear) else self.base.dequantize_weight()

    def new_adapter(self, rank, alpha, config):
        """A LoRAAdapter in the base weight's dtype and device (float32 beside a quantized weight, as QLoRA
        trains adapters in higher precision than W); a DoRA adapter's m starts at ‖W0‖ (DoRA §4.1),
        W0 dequantized for an NF4 base (QDoRA)."""
        if isinstance(self.base, nn.Linear):
            kw = dict(device=self.base.weight.device, dtype=self.base.weight.dtype)
        else:
            tensors = [*self.base.parameters(), *self.base.buffers()]
            kw = dict(device=tensors[0].device if tensors else None, dtype=torch.float32)
        adapter = LoRAAdapter(self.in_features, self.out_features, rank, alpha, config.lora_dropout,
                              config.use_rslora, config.use_dora, **kw)
        if config.use_dora:
            adapter.init_magnitude(self.base_weight())
        return adapter

    def set_active(self, names):
        dora = [n for n in names if self.adapters[n].use_dora] if all(n in self.adapters for n in names) else []
        check_dora_alone(names, dora)
        super().set_active(names)

    def forward(self, x):
        """(..., d_in) -> (..., d_out): base(x) + Σ_active (α / r) · dropout(x) Aᵀ Bᵀ (see LoRAAdapter.forward).

        One plain adapter on an nn.Linear base, all in x's dtype and outside autocast (the fine-tune
        job's case), runs through lora.backward.lora_linear: the same h, with a hand-written backward
        that is faster on a CPU than autograd's. Every other case adds each adapter's output to base(x).
        """
        if self.merged or self.disabled:  # merged: ΔW already sits in base.weight
            return self.base(x)
        if len(self.active_adapters) == 1:
            adapter = self.adapters[self.active_adapters[0]]
            if isinstance(self.base, nn.Linear) and adapter.runs_fused(x, self.base.weight):
                return adapter.fused_output(x, self.base.weight, self.base.bias)
        out = self.base(x)
        for name in self.active_adapters:
            adapter = self.adapters[name]
            if adapter.use_dora:  # the only active adapter (set_active): out is base(x) here
                out = adapter.dora_output(x, self.base_weight(), self.base.bias, out)
            else:
                out = out + adapter(x)
        return out

    def _dora(self, names):
        """The DoRA adapter among `names` (there is at most one, set_active), else None."""
        return next((self.adapters[n] for n in names if self.adapters[n].use_dora), None)

    def merged_weight(self, names=None):
        """W + ΔW, or for a DoRA adapter W' = m (W + ΔW) / ‖W + ΔW‖ (DoRA §4.1, Eq. 5)."""
        names = self.active_adapters if names is None else names
        dora = self._dora(names)
        if dora is None:
            return super().merged_weight(names)
        return finite_weight(dora.dora_merged(self.base_weight().detach()), f"DoRA's merged weight of {names}")

    def unmerged_weight(self):
        """W − ΔW, or for a DoRA adapter W0 = W' ‖W0 + ΔW‖ / m − ΔW with the norm kept by merge()."""
        dora = self._dora(self.merged_adapters)
        return super().unmerged_weight() if dora is None else dora.dora_unmerged(self.base.weight.detach())

    def check_mergeable(self):
        if not isinstance(self.base, nn.Linear):
            raise ValueError(f"cannot merge into a quantized {type(self.base).__name__}: W + ΔW would have to be "
                             "re-quantized; merge_and_unload(model) returns float nn.Linear layers holding dequant(W) + ΔW, "
                             "merge_and_requantize(model) NF4 ones")
        super().check_mergeable()

    def merge(self):
        """See LoRALayer.merge. A DoRA adapter keeps ‖W0 + ΔW‖ for unmerge (PEFT caches it too).

        Raises:
            ValueError: also for a DoRA adapter whose magnitude is 0 on a row that has a direction:
                that row would merge to zero and unmerge could not restore it.
        """
        dora = None if self.merged or not self.active_adapters else self._dora(self.active_adapters)
        norm = None
        if dora is not None:
            self.check_mergeable()
            norm = dora.merge_norm(self.base.weight.detach())
            lost = ((dora.lora_magnitude_vector.detach() == 0) & (norm > 0)).nonzero().flatten().tolist()
            if lost:
                raise ValueError(f"DoRA's magnitude m is 0 on output rows {lost[:8]}: merged in place they would become "
                                 "zero and unmerge could not restore W0; use merge_and_unload, or keep it unmerged")
        super().merge()
        if dora is not None:
            dora.dora_norm = norm

    def forget_merge(self):
        super().forget_merge()
        for adapter in self.adapters.values():
            adapter.dora_norm = None

    @torch.no_grad()
    def to_plain(self):
        """A new plain nn.Linear computing what this layer computes, with the active ΔW folded into its weight.

        For an nn.Linear base the weight is W + ΔW; for a quantized base it is dequant(W) + ΔW, a float
        layer (re-quantizing it would add a second rounding error). Nothing here is modified.
        """
        w = self.base.weight.detach().clone() if self.merged else self.merged_weight()
        bias = self.base.bias
        linear = nn.Linear(self.in_features, self.out_features, bias=bias is not None, device=w.device, dtype=w.dtype)
        if isinstance(self.base, nn.Linear):  # keep the base weight's memory layout (its strides), not only its values
            linear.weight = nn.Parameter(torch.empty_like(self.base.weight, dtype=w.dtype))
        linear.weight.copy_(w)
        if bias is not None:
            linear.bias.copy_(bias)
        return linear.requires_grad_(False)  # stays frozen, like the base it replaces

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"active={self.active_adapters}, merged={self.merged}")


def check_dora_alone(names, dora_names):
    """Raise ValueError if a DoRA adapter would be active beside another adapter (see LoRALinear)."""
    if dora_names and len(names) > 1:
        raise ValueError(f"adapters {list(names)} include the DoRA adapter {dora_names[0]!r}; a DoRA adapter "
                         "can only be active alone (merge_and_unload it first, or activate it alone)")
