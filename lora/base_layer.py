"""LoRALayer: the contract every LoRA layer keeps, a frozen base plus named adapters (Hu et al., 2021, §4.1).

    layer.base              the frozen layer being adapted (nn.Linear, a quantized linear, nn.Embedding)
    layer.adapters          {name: adapter}: what each adapter owns (A, B, its scaling, ...)
    layer.active_adapters   the names forward adds, in order: h = base(x) + Σ_active ΔW_i x
    layer.merged_adapters   the names whose ΔW sits in base.weight (merge); forward is then the base alone
    layer.disabled          True inside lora.merge.disable_lora: forward is the base alone
    layer.tied_to           the modules sharing base.weight (set by apply_lora): merge refuses then

LoRALinear (lora.layer) and LoRAEmbedding (lora.embedding) differ only in what one adapter is, how
its ΔW is laid out and added in forward, and which plain layer a merged one becomes (to_plain). The
model-wide code (lora.switching, lora.merge, lora.io.adapter_io) talks to this contract alone, so every
adapter operation works the same on both.

Shape legend: W the base weight, (d_out, d_in) for a linear layer, (V, C) for an embedding table.
"""

import warnings

import torch
import torch.nn as nn

from lora.adapter import check_adapter_name


class LoRALayer(nn.Module):
    """A frozen `base` and the adapters added to it by name; see the module docstring for the attributes.

    Subclasses supply new_adapter (one adapter's module), forward and to_plain.
    """

    def __init__(self, base):
        super().__init__()
        self.base = base
        self.adapters = nn.ModuleDict()  # name -> adapter
        self.active_adapters = []        # names whose ΔW forward adds
        self.merged_adapters = []        # names whose ΔW sits in base.weight (set by merge)
        self.disabled = False            # True inside disable_lora(): forward is the base alone
        self.tied_to = ()                # modules sharing base.weight (set by apply_lora); merge refuses then
        base.requires_grad_(False)

    def new_adapter(self, rank, alpha, config):
        """The adapter module for `config` (a LoraConfig) at this layer's rank and alpha."""
        raise NotImplementedError

    def to_plain(self):
        """A new plain layer computing what this one computes, the active ΔW folded into its weight."""
        raise NotImplementedError

    @property
    def adapter(self):
        """The layer's adapter when it holds exactly one; several need layer.adapters[name]."""
        if len(self.adapters) != 1:
            raise ValueError(f"this layer holds the adapters {list(self.adapters)}; pick one with layer.adapters[name]")
        return next(iter(self.adapters.values()))

    # the single-adapter view of the settings every adapter has
    @property
    def rank(self):
        return self.adapter.rank

    @property
    def alpha(self):
        return self.adapter.alpha

    @property
    def scaling(self):
        return self.adapter.scaling

    @property
    def use_rslora(self):
        return self.adapter.use_rslora

    @property
    def merged(self):
        """True while ΔW of the merged adapters is added into base.weight."""
        return bool(self.merged_adapters)

    def base_weight(self):
        """W, the weight ΔW is added to (a quantized base's layer returns it dequantized)."""
        return self.base.weight

    def add_adapter(self, name, config, rank=None, alpha=None):
        """Add adapter `name` with `config`'s settings, inactive and frozen, with ΔW = 0 until trained.

        rank and alpha are this layer's own when they differ from config.r and config.lora_alpha
        (rank_pattern, alpha_pattern); the config has checked every value.
        """
        check_adapter_name(name)
        if name in self.adapters:
            raise ValueError(f"adapter {name!r} exists already; this layer holds {list(self.adapters)}")
        adapter = self.new_adapter(config.r if rank is None else rank, config.lora_alpha if alpha is None else alpha,
                                   config)
        self.adapters[name] = adapter.requires_grad_(False)
        return adapter

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
        """ΔW = Σ_i (α_i / r_i) B_i A_i over the active adapters (or `names`), in W's layout (LoRA §4.1)."""
        names = self.active_adapters if names is None else names
        if not names:
            raise ValueError("no adapter is active on this layer, so ΔW is zero")
        return sum(self.adapters[n].delta_weight() for n in names)

    def merged_weight(self, names=None):
        """W + ΔW of the active adapters (or `names`), a new tensor in W's dtype; W itself if there are none.

        Raises:
            ValueError: the sum has non-finite entries.
        """
        names = self.active_adapters if names is None else names
        weight = self.base_weight().detach()
        if not names:
            return weight.clone()
        return finite_weight(weight + self.delta_weight(names).to(weight.dtype), f"W + ΔW of {names}")

    def unmerged_weight(self):
        """W − ΔW of the merged adapters: the weight merge() started from, up to rounding."""
        weight = self.base.weight.detach()
        return finite_weight(weight - self.delta_weight(self.merged_adapters).to(weight.dtype),
                       f"W - ΔW of {self.merged_adapters}")

    def check_mergeable(self):
        """Raise ValueError if ΔW cannot be written into base.weight: it is shared with other modules."""
        if self.tied_to and self.base.weight is self._tied_weight[0]:
            raise ValueError(f"the base weight is shared with {list(self.tied_to)}; merging would change them too. "
                             "Call lora.untie_weight(model, '<this layer>.base') first, or keep the adapter unmerged")

    def merge(self):
        """W ← W + ΔW of the active adapters, in place, so forward costs what the base alone costs
        (LoRA §4.1, no inference latency). A layer without an active adapter is left as it is.

        Raises:
            ValueError: see check_mergeable, or a non-finite merged weight; the weight is left unchanged.
        """
        if self.merged:
            warnings.warn(f"{type(self).__name__}.merge(): already merged; nothing changed", stacklevel=2)
            return
        if not self.active_adapters:
            return
        self.check_mergeable()
        with torch.no_grad():
            self.base.weight.copy_(self.merged_weight())
        self.merged_adapters = list(self.active_adapters)

    def unmerge(self):
        """W ← W − ΔW of the merged adapters, undoing merge(); exact up to floating-point rounding."""
        if not self.merged:
            warnings.warn(f"{type(self).__name__}.unmerge(): not merged; nothing changed", stacklevel=2)
            return
        with torch.no_grad():
            self.base.weight.copy_(self.unmerged_weight())
        self.merged_adapters = []

    def forget_merge(self):
        """Mark the layer unmerged after its old weight was copied back by hand (lora.merge's rollback)."""
        self.merged_adapters = []

    def mark_tied(self, names, weight):
        """Record that `weight` (the base weight now) is shared with the modules `names`: merge() then refuses."""
        self.tied_to = tuple(names)
        self._tied_weight = [weight]  # in a list, so nn.Module does not register it a second time


def finite_weight(weight, what):
    """`weight` itself; raises ValueError naming `what` if it has a NaN or inf entry."""
    if not torch.isfinite(weight).all():
        raise ValueError(f"{what} has non-finite entries; the weight was left unchanged")
    return weight
