"""How a LoRA adapter starts: PEFT's initialisations as pure functions returning (A, B, new base weight).

    "default"        A ~ Kaiming-uniform(a=√5), B = 0                  (LoRA §4.1; loralib, PEFT's True)
    "gaussian"       A ~ N(0, (1/r)²), B = 0                           (PEFT's "gaussian")
    "pissa"          s B A = U_r S_r V_rᵀ, base ← W0 − s B A           (PiSSA, Meng et al., 2024, §3)
    "pissa_niter_k"  the same with a randomised SVD, k subspace iterations (PiSSA §3, fast SVD)

"default" and "gaussian" leave the base weight as it is and start at ΔW = 0. PiSSA moves the
principal part of W0 into the adapter and leaves the residual in the base, so the sum, and the
model's output, is unchanged at initialisation; but the base is then no longer the original W0,
and an adapter trained this way only works on that residual base (see docs/lora.md).

Shape legend:
    d_in / d_out  the adapted layer's input / output sizes     r  rank     s  scaling (α/r or α/√r)
"""

import math
import re

import torch
import torch.nn as nn

from lora.checks import check_float, check_int

INIT_METHODS = ("default", "gaussian", "pissa", "pissa_niter_<k>")
_NITER = re.compile(r"pissa_niter_(\d+)")


def check_init(init, field="init"):
    """Validate an initialisation name; return ("default" | "gaussian" | "pissa", niter or None).

    Raises:
        ValueError: a name not in INIT_METHODS (the message names `field` and lists them).
    """
    if init in ("default", "gaussian", "pissa"):
        return init, None
    match = _NITER.fullmatch(init) if isinstance(init, str) else None
    if match is None:
        raise ValueError(f"{field}={init!r}: choose one of {list(INIT_METHODS)} (k a non-negative integer)")
    return "pissa", int(match.group(1))


def default_init(rank, d_in, d_out, dtype=torch.float32, device=None, generator=None):
    """A ~ Kaiming-uniform(a=√5) (r, d_in), B = 0 (d_out, r): nn.Linear's init for A, so ΔW = 0 (LoRA §4.1).

    Kaiming-uniform with a=√5 draws from U(−1/√d_in, 1/√d_in). The paper draws A from a Gaussian;
    loralib and PEFT use this one.
    """
    A = torch.empty(rank, d_in, dtype=dtype, device=device)
    nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=generator)
    return A, torch.zeros(d_out, rank, dtype=dtype, device=device)


def gaussian_init(rank, d_in, d_out, dtype=torch.float32, device=None, generator=None):
    """A ~ N(0, σ²) with σ = 1/r (r, d_in), B = 0 (d_out, r): PEFT's "gaussian" (nn.init.normal_(std=1/r)).

    The standard deviation is 1/r, not 1/√r: the variance is 1/r².
    """
    A = torch.empty(rank, d_in, dtype=dtype, device=device)
    nn.init.normal_(A, std=1 / rank, generator=generator)
    return A, torch.zeros(d_out, rank, dtype=dtype, device=device)


def _svd_top(weight, rank, niter):
    """The top-r singular triplets of W: U_r (d_out, r), S_r (r,), V_rᵀ (r, d_in); randomised when niter is given."""
    if niter is None:
        U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
        return U[:, :rank], S[:rank], Vh[:rank]
    U, S, V = torch.svd_lowrank(weight, q=rank, niter=niter)  # Halko et al.'s randomised SVD
    return U, S, V.T


def pissa_init(weight, rank, scaling, niter=None):
    """PiSSA: A = √(S_r/s) V_rᵀ, B = U_r √(S_r/s), base ← W0 − s B A (Meng et al., 2024, §3).

    W0 = U S Vᵀ; the top-r triplets go into the adapter, split as √S on each side as PEFT does, and
    divided by s so that s B A = U_r S_r V_rᵀ, the best rank-r approximation of W0 (Eckart–Young).
    The paper has no scaling (s = 1); PEFT divides by s so that any α works, and so do we.

    The SVD runs in float32 for float32/16/bfloat16 weights (as PEFT's), in float64 for float64 weights
    (PEFT refuses float64). A and B come back in that precision; the residual in the weight's dtype.

    Args:
        weight: W0, (d_out, d_in) floating point.
        rank: r, at most min(d_in, d_out).
        scaling: s, the adapter's α/r (or α/√r).
        niter: None for the exact SVD ("pissa"), or k >= 0 subspace iterations of torch.svd_lowrank
            ("pissa_niter_k"): much faster on large layers, approximate.
    Returns:
        (A (r, d_in), B (d_out, r), residual W0 − s B A (d_out, d_in)).
    Raises:
        ValueError: a bad rank, scaling or niter, or a non-float weight.
    """
    rank = check_int("rank", rank)
    if not weight.is_floating_point() or weight.dim() != 2:
        raise ValueError(f"PiSSA needs a 2-D floating-point weight, got {weight.dtype} of shape {tuple(weight.shape)}")
    if rank > min(weight.shape):
        raise ValueError(f"rank={rank} exceeds min(d_out, d_in) = {min(weight.shape)} of a {tuple(weight.shape)} weight")
    check_float("scaling", scaling)
    if niter is not None:
        niter = check_int("niter", niter, least=0)
    work = torch.float64 if weight.dtype == torch.float64 else torch.float32
    W = weight.detach().to(work)
    U, S, Vh = _svd_top(W, rank, niter)
    root = torch.sqrt(S / scaling)  # (r,)
    A = root.unsqueeze(1) * Vh  # diag(√(S/s)) V_rᵀ: (r, d_in)
    B = U * root  # U_r diag(√(S/s)): (d_out, r)
    residual = W - scaling * (B @ A)
    return A.contiguous(), B.contiguous(), residual.to(weight.dtype)


def lora_init(init, weight, rank, scaling, generator=None):
    """Dispatch on an initialisation name; return (A (r, d_in), B (d_out, r), new base weight (d_out, d_in)).

    For "default" and "gaussian" the base weight returned is `weight` itself (unchanged); A and B are
    in its dtype and device. For PiSSA see pissa_init.
    Raises:
        ValueError: an unknown name (see check_init) or a bad argument.
    """
    method, niter = check_init(init)
    if method == "pissa":
        return pissa_init(weight, rank, scaling, niter)
    rank = check_int("rank", rank)
    d_out, d_in = weight.shape
    make = default_init if method == "default" else gaussian_init
    A, B = make(rank, d_in, d_out, dtype=weight.dtype, device=weight.device, generator=generator)
    return A, B, weight
