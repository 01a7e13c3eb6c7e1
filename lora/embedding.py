"""LoRAEmbedding: a frozen embedding table plus a trainable low-rank update (Hu et al., 2021, §4.1).

An embedding is a linear map applied to a one-hot index: row i of the table E is Eᵀ e_i. LoRA adds
ΔE with ΔEᵀ = s B A in the linear layer's layout, looked up the same way:

    h = E[i] + s · (Aᵀ[i]) Bᵀ,    A (r, num_embeddings), B (embedding_dim, r),    ΔE = s (B A)ᵀ

Names and layout are PEFT's: lora_embedding_A and lora_embedding_B, raw Parameters, stored in an
adapter file as "base_model.model.<module path>.lora_embedding_A" (no ".weight" suffix, unlike the
linear layer's lora_A.weight).

Shape legend:
    V  num_embeddings     C  embedding_dim     r  rank     ...  any leading dimensions of the indices
"""

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from lora.checks import check_bool, check_float, check_int
from lora.low_rank import lora_scaling


class LoRAEmbedding(nn.Module):
    """i ↦ E[i] + s · Aᵀ[i] Bᵀ with E frozen and only A, B trained (LoRA §4.1, PEFT's Embedding layout).

    Args:
        base: the nn.Embedding to adapt; its weight is frozen here.
        rank: r, a positive integer at most min(V, C).
        alpha: α; the update is scaled by s = α / r (α / √r with rsLoRA).
        use_rslora: scale by α / √r (Kalajdzievski, 2023).
    There is no dropout: PEFT's embedding layer accepts lora_dropout but never applies it (an input
    index cannot be partly dropped), so neither do we.
    Raises:
        ValueError: a bad hyperparameter, a base that is not an nn.Embedding, or one with max_norm or
            sparse gradients (max_norm renormalises the looked-up table in place, which for Aᵀ would
            silently rewrite the adapter).
    """

    def __init__(self, base, rank, alpha, use_rslora=False):
        super().__init__()
        if not isinstance(base, nn.Embedding):
            raise ValueError(f"LoRAEmbedding needs an nn.Embedding, got {type(base).__name__}")
        if base.max_norm is not None or base.sparse:
            raise ValueError(f"LoRAEmbedding does not support max_norm={base.max_norm} or sparse={base.sparse}")
        rank, use_rslora = check_int("rank", rank), check_bool("use_rslora", use_rslora)
        alpha = check_float("alpha", alpha)
        if rank > min(base.num_embeddings, base.embedding_dim):
            raise ValueError(f"rank={rank} exceeds min(num_embeddings, embedding_dim) = "
                             f"{min(base.num_embeddings, base.embedding_dim)}; ΔE's rank cannot exceed it")
        self.base = base
        self.num_embeddings, self.embedding_dim = base.num_embeddings, base.embedding_dim
        self.rank, self.alpha, self.use_rslora = rank, alpha, use_rslora
        self.scaling = lora_scaling(rank, alpha, use_rslora)
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_embedding_A = nn.Parameter(torch.empty(rank, self.num_embeddings, **kw))  # (r, V)
        self.lora_embedding_B = nn.Parameter(torch.empty(self.embedding_dim, rank, **kw))  # (C, r)
        self.reset_lora_parameters()
        self.merged = False  # True while ΔE is added into base.weight
        self.disabled = False  # True inside disable_lora(): forward is the base alone
        self.active = True  # False while another adapter is selected (lora.adapters.set_adapter)
        self.adapter_name = "default"  # the adapter this table's A and B belong to (apply_lora sets it)
        self.tied_to = ()  # modules sharing base.weight (apply_lora sets it); merge refuses then
        base.weight.requires_grad_(False)

    def reset_lora_parameters(self):
        """A = 0, B ~ N(0, 1): the reverse of the linear layer's init, as in loralib and PEFT.

        The input is a one-hot index, so "A x" is a lookup of one column of A. With A = 0 every lookup
        is zero and ΔE = 0, so training starts at the base. B random gives A nonzero gradients from
        step 1: ∂L/∂A[:, i] = s Bᵀ g for each looked-up index i (g = ∂L/∂h), while B's gradient
        s g (A[:, i])ᵀ is zero until A moves. Zero B with random A would work too; this is the choice
        loralib made and PEFT kept, so adapters initialise like theirs.
        """
        nn.init.zeros_(self.lora_embedding_A)
        nn.init.normal_(self.lora_embedding_B)

    def delta_weight(self):
        """ΔE = s (B A)ᵀ, shape (V, C) like nn.Embedding.weight (LoRA §4.1)."""
        return self.scaling * (self.lora_embedding_B @ self.lora_embedding_A).T  # (C, r) @ (r, V) -> (C, V) -> (V, C)

    def forward(self, idx):
        """(...) integer indices -> (..., C): base(idx) + s · Aᵀ[idx] Bᵀ (a lookup, then an r-wide matmul)."""
        out = self.base(idx)
        if self.merged or self.disabled or not self.active:
            return out
        after_A = F.embedding(idx, self.lora_embedding_A.T, padding_idx=self.base.padding_idx,
                              scale_grad_by_freq=self.base.scale_grad_by_freq)  # (...) -> (..., r)
        return out + (after_A @ self.lora_embedding_B.T) * self.scaling  # (..., r) -> (..., C)

    def merge(self):
        """E ← E + ΔE in place, so the lookup costs what the base alone costs.

        Raises:
            ValueError: the table is shared with another module (self.tied_to, e.g. GPT-2's output head;
                lora.tied.untie_weight first), or E + ΔE is not finite; the table is left unchanged.
        """
        if self.merged:
            warnings.warn("LoRAEmbedding.merge(): already merged; nothing changed", stacklevel=2)
            return
        if self.tied_to and self.base.weight is self._tied_weight[0]:
            raise ValueError(f"the embedding table is shared with {list(self.tied_to)}; merging would change them "
                             "too. Call lora.untie_weight(model, '<this layer>.base') first, or keep it unmerged")
        with torch.no_grad():
            self.base.weight.copy_(self._checked_sum(+1))
        self.merged = True

    def unmerge(self):
        """E ← E − ΔE, undoing merge(); exact up to floating-point rounding."""
        if not self.merged:
            warnings.warn("LoRAEmbedding.unmerge(): not merged; nothing changed", stacklevel=2)
            return
        with torch.no_grad():
            self.base.weight.copy_(self._checked_sum(-1))
        self.merged = False

    def mark_tied(self, names, weight):
        """Record that `weight` (the table now) is shared with the modules `names`: merge() then refuses."""
        self.tied_to = tuple(names)
        self._tied_weight = [weight]  # in a list, so nn.Module does not register it a second time

    @torch.no_grad()
    def to_embedding(self):
        """A new plain nn.Embedding holding E + ΔE (frozen); nothing here is modified."""
        w = self.base.weight.detach().clone() if self.merged else self._checked_sum(+1)
        b = self.base
        emb = nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=b.padding_idx,
                           scale_grad_by_freq=b.scale_grad_by_freq, device=w.device, dtype=w.dtype)
        emb.weight.copy_(w)
        return emb.requires_grad_(False)

    def _checked_sum(self, sign):
        delta = self.delta_weight().to(self.base.weight.dtype)
        out = self.base.weight + sign * delta
        if not torch.isfinite(out).all():
            raise ValueError(f"E {'+' if sign > 0 else '-'} ΔE has non-finite entries (max |ΔE| = "
                             f"{delta.abs().max().item():.3g}); the table was left unchanged")
        return out

    def extra_repr(self):
        return (f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}, rank={self.rank}, "
                f"alpha={self.alpha}, scaling={self.scaling:.4g}, use_rslora={self.use_rslora}, merged={self.merged}")
