"""Exercise: the LoRA forward pass and merging (Hu et al., 2021, §4.1), as plain functions over tensors.

    h = W x + b + ΔW x,    ΔW = (α / r) · B · A

Write each function with torch operations only (no `lora` import: that is the answer). Grade it with

    pytest tests/test_exercises.py --impl=mine -k lora_layer

after copying this file to notebooks/exercises/mine/ (see docs/exercises.md).

Shape legend (PyTorch's nn.Linear layout, the paper's A and B):
    W (d_out, d_in)   b (d_out,) or None   A (r, d_in)   B (d_out, r)   x (..., d_in)
    ...  any leading dimensions (batch, time)
"""

import torch  # noqa: F401  (you will need it)


def delta_weight(A, B, alpha, r):
    """ΔW = (α / r) · B · A (LoRA §4.1).

    Args:
        A: (r, d_in). B: (d_out, r). alpha: α > 0. r: the rank, a positive int (= A.shape[0]).
    Returns:
        (d_out, d_in), the same layout as W; its rank is at most r.
    """
    raise NotImplementedError


def lora_forward(x, W, b, A, B, alpha, r):
    """h = x Wᵀ + b + (α / r) · (x Aᵀ) Bᵀ: (..., d_in) -> (..., d_out) (LoRA §4.1, Eq. 3).

    Never build ΔW here: the low-rank path x -> x Aᵀ (..., r) -> (..., d_out) costs r·(d_in + d_out)
    multiply-adds per token instead of d_in·d_out. `b` may be None (a layer without bias).
    """
    raise NotImplementedError


def merge(W, A, B, alpha, r):
    """W' = W + (α / r) · B · A, so that x W'ᵀ + b equals lora_forward(x, W, b, A, B, alpha, r).

    Returns a new (d_out, d_in) tensor; W itself must be left unchanged.
    """
    raise NotImplementedError


def unmerge(W_merged, A, B, alpha, r):
    """W = W' − (α / r) · B · A, the inverse of `merge` (exact up to floating-point rounding)."""
    raise NotImplementedError
