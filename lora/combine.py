"""Adapter arithmetic: a new adapter from a weighted combination of existing ones (PEFT's add_weighted_adapter).

Given adapters i with ΔW_i = s_i B_i A_i (s_i = α_i / r_i) and weights w_i (negative ones subtract),
each layer of the new adapter gets, with scaling 1 (PEFT sets r = lora_alpha = the new rank):

    cat     A = [w_1 s_1 A_1; w_2 s_2 A_2; ...],  B = [B_1, B_2, ...]    ΔW = Σ w_i ΔW_i exactly, rank Σ r_i
    linear  A = Σ sgn(w_i) √|w_i s_i| A_i,  B = Σ √|w_i s_i| B_i        same rank r; not Σ w_i ΔW_i (cross terms)
    svd     ΔW = Σ w_i ΔW_i = U S Vᵀ,  B = U_k S_k,  A = V_kᵀ            the best rank-k approximation (Eckart–Young)

A layer that lacks some of the adapters combines the ones it has (a missing adapter contributes zero).
With a single adapter PEFT combines linearly whatever the type asked for, giving exactly w ΔW at rank r.

Shape legend: r_i ranks, k the new rank, d_in / d_out the layer's input / output sizes.
"""

import math
import numbers

import torch

from lora.adapters import check_adapters_exist
from lora.checks import check_choice, check_int
from lora.inject import apply_lora, lora_embeddings, lora_layers
from lora.layer import check_adapter_name
from lora.targets import as_regex

COMBINATION_TYPES = ("cat", "linear", "svd")


def cat_AB(parts, rank):
    """cat: A = [w_1 s_1 A_1; ...] (rows), B = [B_1, ...] (columns), zero-padded to `rank`; B A = Σ w_i s_i B_i A_i.

    `parts` is [(adapter, weight)] of the adapters this layer has. Exact: B A is a sum of blocks.
    """
    A = torch.cat([w * a.scaling * a.lora_A for a, w in parts], dim=0)  # (Σ r_i, d_in)
    B = torch.cat([a.lora_B for a, _ in parts], dim=1)                  # (d_out, Σ r_i)
    pad = rank - A.shape[0]  # a layer without some of the adapters: their rows stay zero, as in PEFT
    return torch.nn.functional.pad(A, (0, 0, 0, pad)), torch.nn.functional.pad(B, (0, pad))


def linear_AB(parts):
    """linear: A = Σ sgn(w_i) √|w_i s_i| A_i, B = Σ √|w_i s_i| B_i (PEFT's weighted average of A's and B's).

    B A = Σ_i w_i s_i B_i A_i + Σ_{i≠j} sgn(w_j) √|w_i s_i| √|w_j s_j| B_i A_j: the diagonal terms are
    Σ w_i ΔW_i, the cross terms are the error (zero only in special cases, e.g. a single adapter).
    """
    roots = [(math.sqrt(abs(w * a.scaling)), 1.0 if w * a.scaling >= 0 else -1.0) for a, w in parts]
    A = sum(sign * root * a.lora_A for (a, _), (root, sign) in zip(parts, roots, strict=True))  # (r, d_in)
    B = sum(root * a.lora_B for (a, _), (root, _) in zip(parts, roots, strict=True))            # (d_out, r)
    return A, B


def svd_AB(parts, rank):
    """svd: the rank-k truncated SVD of ΔW = Σ w_i ΔW_i, split as B = U_k S_k, A = V_kᵀ (PEFT's split).

    By Eckart–Young (1936) U_k S_k V_kᵀ is the closest rank-k matrix to ΔW in Frobenius and spectral
    norm, with squared Frobenius error Σ_{j>k} σ_j², the theorem of notebook 01.
    """
    delta = sum(w * a.delta_weight() for a, w in parts)  # (d_out, d_in)
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    return Vh[:rank], U[:, :rank] * S[:rank]  # A (k, d_in), B (d_out, k) = U_k diag(S_k)


def add_weighted_adapter(model, adapters, weights, adapter_name, combination_type="svd", svd_rank=None):
    """Add adapter `adapter_name` combining `adapters` with `weights`, with PEFT's semantics (see module docstring).

    The new adapter covers the union of the adapters' layers, has r = lora_alpha = its rank (scaling 1),
    the dropout of the first adapter and no rsLoRA; it is added inactive and frozen, as PEFT adds it,
    and saves, loads and merges like any other adapter.

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
            different ranks, svd_rank not a positive integer or above min(d_in, d_out) of a layer, or a
            rank larger than a layer allows. The model is unchanged when this is raised.
    """
    kind, rank = _check(model, adapters, weights, adapter_name, combination_type, svd_rank)
    layers = [(n, layer) for n, layer in lora_layers(model) if any(a in layer.adapters for a in adapters)]
    for n, layer in layers:
        if rank > min(layer.in_features, layer.out_features):
            raise ValueError(f"the combined adapter's rank {rank} exceeds min(d_in, d_out) = "
                             f"{min(layer.in_features, layer.out_features)} of {n!r}; use 'svd' with a smaller svd_rank")
    with torch.no_grad():
        new = {}
        for n, layer in layers:
            parts = [(layer.adapters[a], float(w)) for a, w in zip(adapters, weights, strict=True) if a in layer.adapters]
            new[n] = cat_AB(parts, rank) if kind == "cat" else linear_AB(parts) if kind == "linear" else svd_AB(parts, rank)
    configs = model.lora_configs
    apply_lora(model, rank, rank, configs[adapters[0]]["dropout"], _union_targets(model, adapters, layers),
               use_rslora=False, adapter_name=adapter_name)
    with torch.no_grad():
        for n, layer in lora_layers(model):
            if n in new:
                layer.adapters[adapter_name].lora_A.copy_(new[n][0])
                layer.adapters[adapter_name].lora_B.copy_(new[n][1])
    return model


def _check(model, adapters, weights, adapter_name, combination_type, svd_rank):
    """Validate add_weighted_adapter's arguments; return (combination used, new rank)."""
    if not isinstance(adapters, (list, tuple)) or not adapters:
        raise ValueError(f"adapters={adapters!r}: give a non-empty list of adapter names")
    check_adapters_exist(model, adapters)
    check_adapter_name(adapter_name)
    if adapter_name in model.lora_configs:
        raise ValueError(f"adapter_name={adapter_name!r} exists already; the model has {list(model.lora_configs)}")
    if not isinstance(weights, (list, tuple)) or len(weights) != len(adapters):
        raise ValueError(f"weights={weights!r}: give one weight per adapter ({len(adapters)})")
    for w in weights:
        if not isinstance(w, numbers.Real) or isinstance(w, bool) or not math.isfinite(w):
            raise ValueError(f"weights={weights!r}: {w!r} is not a finite number")
    check_choice("combination_type", combination_type, COMBINATION_TYPES)
    if svd_rank is not None:
        check_int("svd_rank", svd_rank)
        if combination_type != "svd" or len(adapters) == 1:
            raise ValueError(f"svd_rank={svd_rank!r} applies to combination_type='svd' of two or more adapters "
                             "(PEFT combines a single adapter linearly, at its own rank)")
    for a in adapters:  # PEFT refuses these too: DoRA's m and per-layer ranks do not combine as A and B do
        cfg = model.lora_configs[a]
        if cfg.get("use_dora") or cfg.get("rank_pattern") or cfg.get("alpha_pattern") or as_regex(cfg["targets"]):
            raise ValueError(f"adapter {a!r} uses DoRA, rank/alpha patterns or a regex target; "
                             "add_weighted_adapter combines plain LoRA adapters only")
    if any(True for _ in lora_embeddings(model)):
        raise ValueError("add_weighted_adapter combines LoRA on linear layers; this model has LoRA embeddings")
    ranks = [model.lora_configs[a]["rank"] for a in adapters]
    kind = "linear" if len(adapters) == 1 else combination_type  # PEFT's rule
    if kind == "linear" and len(set(ranks)) > 1:
        raise ValueError(f"combination_type='linear' needs adapters of one rank, got {dict(zip(adapters, ranks, strict=True))}; "
                         "use 'cat' or 'svd'")
    return kind, {"cat": sum(ranks), "linear": ranks[0], "svd": svd_rank or max(ranks)}[kind]


def _union_targets(model, adapters, layers):
    """Targets selecting the union of the adapters' layers: their names joined, or the layer paths."""
    lists = [model.lora_configs[a]["targets"] for a in adapters]
    if all(t == ["all-linear"] for t in lists):
        return ["all-linear"]
    if any(t == ["all-linear"] for t in lists):
        return [n for n, _ in layers]  # full paths select exactly these layers
    return list(dict.fromkeys(t for targets in lists for t in targets))
