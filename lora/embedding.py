"""LoRAEmbedding: a frozen embedding table plus trainable low-rank updates (Hu et al., 2021, §4.1).

An embedding is a linear map applied to a one-hot index: row i of the table E is Eᵀ e_i. LoRA adds
ΔE with ΔEᵀ = s B A in the linear layer's layout, looked up the same way:

    h = E[i] + s · (Aᵀ[i]) Bᵀ,    A (r, num_embeddings), B (embedding_dim, r),    ΔE = s (B A)ᵀ

Names and layout are PEFT's: lora_embedding_A and lora_embedding_B, raw Parameters, stored in an
adapter file as "base_model.model.<module path>.lora_embedding_A" (no ".weight" suffix, unlike the
linear layer's lora_A.weight). The table keeps its adapters by name, as LoRALinear does (lora.base_layer),
so an embedding holds, switches, combines, saves and loads several adapters like any LoRA layer.

Shape legend:
    V  num_embeddings     C  embedding_dim     r  rank     ...  any leading dimensions of the indices
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from lora.adapter import lora_scaling
from lora.base_layer import LoRALayer
from lora.config import config_from_keywords


class EmbeddingAdapter(nn.Module):
    """One adapter of an embedding: A (r, V), B (C, r) and s = α / r (α / √r with rsLoRA).

    There is no dropout: PEFT's embedding layer accepts lora_dropout but never applies it (an input
    index cannot be partly dropped), so neither do we. Built by LoRAEmbedding from a checked LoraConfig.
    """

    def __init__(self, num_embeddings, embedding_dim, rank, alpha, use_rslora=False, device=None, dtype=None):
        super().__init__()
        self.rank, self.alpha, self.use_rslora, self.use_dora = rank, alpha, use_rslora, False
        self.scaling = lora_scaling(rank, alpha, use_rslora)
        self.lora_embedding_A = nn.Parameter(torch.empty(rank, num_embeddings, device=device, dtype=dtype))  # (r, V)
        self.lora_embedding_B = nn.Parameter(torch.empty(embedding_dim, rank, device=device, dtype=dtype))  # (C, r)
        self.reset_parameters()

    def reset_parameters(self):
        """A = 0, B ~ N(0, 1): the reverse of the linear layer's init, as in loralib and PEFT.

        The input is a one-hot index, so "A x" is a lookup of one column of A. With A = 0 every lookup
        is zero and ΔE = 0, so training starts at the base. B random gives A nonzero gradients from
        step 1: ∂L/∂A[:, i] = s Bᵀ g for each looked-up index i (g = ∂L/∂h), while B's gradient
        s g (A[:, i])ᵀ is zero until A moves. Zero B with random A would work too; this is the choice
        loralib made and PEFT kept, so adapters initialise like theirs.
        """
        nn.init.zeros_(self.lora_embedding_A)
        nn.init.normal_(self.lora_embedding_B)

    def factors(self):
        """(A, B) with ΔEᵀ = s B A: the Parameters adapter arithmetic (lora.combine) reads and writes."""
        return self.lora_embedding_A, self.lora_embedding_B

    def delta_weight(self):
        """ΔE = s (B A)ᵀ, shape (V, C) like nn.Embedding.weight (LoRA §4.1)."""
        return self.scaling * (self.lora_embedding_B @ self.lora_embedding_A).T  # (C, r) @ (r, V) -> (C, V) -> (V, C)

    def forward(self, idx, padding_idx=None, scale_grad_by_freq=False):
        """(...) integer indices -> (..., C): s · Aᵀ[idx] Bᵀ (a lookup, then an r-wide matmul)."""
        after_A = F.embedding(idx, self.lora_embedding_A.T, padding_idx=padding_idx,
                              scale_grad_by_freq=scale_grad_by_freq)  # (...) -> (..., r)
        return (after_A @ self.lora_embedding_B.T) * self.scaling  # (..., r) -> (..., C)

    def extra_repr(self):
        return f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling:.4g}, use_rslora={self.use_rslora}"


class LoRAEmbedding(LoRALayer):
    """i ↦ E[i] + Σ_active s · Aᵀ[i] Bᵀ with E frozen and only A, B trained (LoRA §4.1, PEFT's Embedding layout).

    Args:
        base: the nn.Embedding to adapt; its weight is frozen here.
        rank, alpha, use_rslora: the first adapter's settings (checked by lora.config.LoraConfig);
            rank=None builds the layer without an adapter (apply_lora adds them with add_adapter).
        adapter_name: the first adapter's name; it is active.
    Raises:
        ValueError: a bad setting, a base that is not an nn.Embedding, or one with max_norm or sparse
            gradients (max_norm renormalises the looked-up table in place, which for Aᵀ would silently
            rewrite the adapter).
    """

    def __init__(self, base, rank=None, alpha=16, use_rslora=False, adapter_name="default"):
        if not isinstance(base, nn.Embedding):
            raise ValueError(f"LoRAEmbedding needs an nn.Embedding, got {type(base).__name__}")
        if base.max_norm is not None or base.sparse:
            raise ValueError(f"LoRAEmbedding does not support max_norm={base.max_norm} or sparse={base.sparse}")
        super().__init__(base)
        self.num_embeddings, self.embedding_dim = base.num_embeddings, base.embedding_dim
        if rank is not None:
            self.add_adapter(adapter_name, config_from_keywords(rank=rank, alpha=alpha, use_rslora=use_rslora))
            self.set_active([adapter_name])

    @property
    def lora_embedding_A(self):
        return self.adapter.lora_embedding_A  # (r, V)

    @property
    def lora_embedding_B(self):
        return self.adapter.lora_embedding_B  # (C, r)

    def new_adapter(self, rank, alpha, config):
        if config.use_dora:
            raise ValueError("use_dora is implemented for linear layers only, not for an embedding")
        if rank > min(self.num_embeddings, self.embedding_dim):
            raise ValueError(f"rank={rank} exceeds min(num_embeddings, embedding_dim) = "
                             f"{min(self.num_embeddings, self.embedding_dim)}; ΔE's rank cannot exceed it")
        w = self.base.weight
        return EmbeddingAdapter(self.num_embeddings, self.embedding_dim, rank, alpha, config.use_rslora,
                                device=w.device, dtype=w.dtype)

    def forward(self, idx):
        """(...) integer indices -> (..., C): base(idx) + Σ_active s · Aᵀ[idx] Bᵀ."""
        out = self.base(idx)
        if self.merged or self.disabled:
            return out
        for name in self.active_adapters:
            out = out + self.adapters[name](idx, self.base.padding_idx, self.base.scale_grad_by_freq)
        return out

    @torch.no_grad()
    def to_plain(self):
        """A new plain nn.Embedding holding E + ΔE of the active adapters (frozen); nothing here is modified."""
        w = self.base.weight.detach().clone() if self.merged else self.merged_weight()
        b = self.base
        emb = nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=b.padding_idx,
                           scale_grad_by_freq=b.scale_grad_by_freq, device=w.device, dtype=w.dtype)
        emb.weight.copy_(w)
        return emb.requires_grad_(False)

    def extra_repr(self):
        return (f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}, "
                f"active={self.active_adapters}, merged={self.merged}")
