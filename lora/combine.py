"""Adapter arithmetic: a new adapter from a weighted combination of existing ones (PEFT's add_weighted_adapter).

Given adapters i with ΔW_i = s_i B_i A_i (s_i = α_i / r_i) and weights w_i (negative ones subtract),
each layer of the new adapter gets, with scaling 1 (PEFT sets r = lora_alpha = the new rank):

    cat     A = [w_1 s_1 A_1; w_2 s_2 A_2; ...],  B = [B_1, B_2, ...]    ΔW = Σ w_i ΔW_i exactly, rank Σ r_i
    linear  A = Σ sgn(w_i) √|w_i s_i| A_i,  B = Σ √|w_i s_i| B_i        same rank r; not Σ w_i ΔW_i (cross terms)
    svd     ΔW = Σ w_i ΔW_i = U S Vᵀ,  B = U_k S_k,  A = V_kᵀ            the best rank-k approximation (Eckart–Young)

A layer that lacks some of the adapters combines the ones it has (a missing adapter contributes zero).
With a single adapter PEFT combines linearly whatever the type asked for, giving exactly w ΔW at rank r.
Embeddings combine the same way, on their (A, B) with ΔEᵀ = s B A (PEFT transposes ΔE for its svd too).

Shape legend: r_i ranks, k the new rank, d_in / d_out the layer's input / output sizes (V / C for a table).
"""

import math

import torch

from lora.adapter import check_adapter_name
from lora.checks import check_choice, check_int, check_numbers
from lora.config import LoraConfig
from lora.inject import apply_lora
from lora.model_layers import check_adapters_exist, lora_modules

COMBINATION_TYPES = ("cat", "linear", "svd")


def cat_AB(parts, rank):
    """cat: A = [w_1 s_1 A_1; ...] (rows), B = [B_1, ...] (columns), zero-padded to `rank`; B A = Σ w_i s_i B_i A_i.

    `parts` is [(A_i, B_i, s_i, w_i)] of the adapters this layer has. Exact: B A is a sum of blocks.
    """
    A = torch.cat([w * s * a for a, _, s, w in parts], dim=0)  # (Σ r_i, d_in)
    B = torch.cat([b for _, b, _, _ in parts], dim=1)           # (d_out, Σ r_i)
    pad = rank - A.shape[0]  # a layer without some of the adapters: their rows stay zero, as in PEFT
    return torch.nn.functional.pad(A, (0, 0, 0, pad)), torch.nn.functional.pad(B, (0, pad))


def linear_AB(parts):
    """linear: A = Σ sgn(w_i) √|w_i s_i| A_i, B = Σ √|w_i s_i| B_i (PEFT's weighted average of A's and B's).

    B A = Σ_i w_i s_i B_i A_i + Σ_{i≠j} sgn(w_j) √|w_i s_i| √|w_j s_j| B_i A_j: the diagonal terms are
    Σ w_i ΔW_i, the cross terms are the error (zero only in special cases, e.g. a single adapter).
    """
    roots = [(math.sqrt(abs(w * s)), 1.0 if w * s >= 0 else -1.0) for _, _, s, w in parts]
    A = sum(sign * root * a for (a, _, _, _), (root, sign) in zip(parts, roots, strict=True))  # (r, d_in)
    B = sum(root * b for (_, b, _, _), (root, _) in zip(parts, roots, strict=True))            # (d_out, r)
    return A, B


def svd_AB(parts, rank):
    """svd: the rank-k truncated SVD of ΔW = Σ w_i s_i B_i A_i, split as B = U_k S_k, A = V_kᵀ (PEFT's split).

    By Eckart–Young (1936) U_k S_k V_kᵀ is the closest rank-k matrix to ΔW in Frobenius and spectral
    norm, with squared Frobenius error Σ_{j>k} σ_j², the theorem of notebook 01.
    """
    delta = sum(w * s * (b @ a) for a, b, s, w in parts)  # (d_out, d_in)
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    return Vh[:rank], U[:, :rank] * S[:rank]  # A (k, d_in), B (d_out, k) = U_k diag(S_k)


def add_weighted_adapter(model, adapters, weights, adapter_name, combination_type="svd", svd_rank=None):
    """Add adapter `adapter_name` combining `adapters` with `weights`, with PEFT's semantics (see module docstring).

    The new adapter covers the union of the adapters' layers (linear layers and embeddings), has
    r = lora_alpha = its rank (scaling 1), the dropout of the first adapter and no rsLoRA; it is added
    inactive and frozen, as PEFT adds it, and saves, loads and merges like any other adapter.

    Args:
        model: a model with LoRA adapters.
        adapters: names of existing adapters.
        weights: one finite number per adapter; negative weights subtract.
        adapter_name: a new name.
        combination_type: "cat" (rank Σ r_i, exact), "linear" (equal ranks needed) or "svd".
        svd_rank: the rank of an "svd" combination; None takes the largest r_i, as PEFT does.
    Returns:
        the model.
    Raises:
        ValueError: an unknown or existing name, weights of another length or not finite, "linear" with
            different ranks, svd_rank not a positive integer, a DoRA adapter or one with per-layer ranks,
            or a new rank larger than a layer allows (naming the layer). The model is unchanged then.
    """
    kind, rank = _check(model, adapters, weights, adapter_name, combination_type, svd_rank)
    layers = [(n, layer) for n, layer in lora_modules(model) if any(a in layer.adapters for a in adapters)]
    for n, layer in layers:
        limit = min(layer.base_weight().shape)
        if rank > limit:
            raise ValueError(f"the combined adapter's rank {rank} exceeds min(d_in, d_out) = {limit} of {n!r}; "
                             "use 'svd' with a smaller svd_rank")
    with torch.no_grad():
        new = {}
        for n, layer in layers:
            parts = [(*layer.adapters[a].factors(), layer.adapters[a].scaling, float(w))
                     for a, w in zip(adapters, weights, strict=True) if a in layer.adapters]
            new[n] = cat_AB(parts, rank) if kind == "cat" else linear_AB(parts) if kind == "linear" else svd_AB(parts, rank)
    first = model.lora_configs[adapters[0]]
    apply_lora(model, LoraConfig(r=rank, lora_alpha=rank, lora_dropout=first.lora_dropout,
                                 target_modules=tuple(n for n, _ in layers)), adapter_name=adapter_name)
    with torch.no_grad():
        for n, layer in lora_modules(model):
            if n in new:
                A, B = layer.adapters[adapter_name].factors()
                A.copy_(new[n][0])
                B.copy_(new[n][1])
    return model


def _check(model, adapters, weights, adapter_name, combination_type, svd_rank):
    """Validate add_weighted_adapter's arguments; return (combination used, new rank)."""
    if not isinstance(adapters, (list, tuple)) or not adapters:
        raise ValueError(f"adapters={adapters!r}: give a non-empty list of adapter names")
    check_adapters_exist(model, adapters)
    check_adapter_name(adapter_name)
    if adapter_name in model.lora_configs:
        raise ValueError(f"adapter_name={adapter_name!r} exists already; the model has {list(model.lora_configs)}")
    check_numbers("weights", weights, count=len(adapters))
    check_choice("combination_type", combination_type, COMBINATION_TYPES)
    if svd_rank is not None:
        check_int("svd_rank", svd_rank)
        if combination_type != "svd" or len(adapters) == 1:
            raise ValueError(f"svd_rank={svd_rank!r} applies to combination_type='svd' of two or more adapters "
                             "(PEFT combines a single adapter linearly, at its own rank)")
    for a in adapters:  # PEFT refuses these too: DoRA's m and per-layer ranks do not combine as A and B do
        cfg = model.lora_configs[a]
        if cfg.use_dora or cfg.rank_pattern or cfg.alpha_pattern:
            raise ValueError(f"adapter {a!r} uses DoRA or rank/alpha patterns; add_weighted_adapter combines plain "
                             "LoRA adapters only")
    ranks = [model.lora_configs[a].r for a in adapters]
    kind = "linear" if len(adapters) == 1 else combination_type  # PEFT's rule
    if kind == "linear" and len(set(ranks)) > 1:
        raise ValueError(f"combination_type='linear' needs adapters of one rank, got "
                         f"{dict(zip(adapters, ranks, strict=True))}; use 'cat' or 'svd'")
    return kind, {"cat": sum(ranks), "linear": ranks[0], "svd": svd_rank or max(ranks)}[kind]
