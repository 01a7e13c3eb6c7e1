"""Exercise: combining LoRA adapters into one (the `cat` and `svd` combinations of adapter arithmetic).

Adapter i (A_i, B_i, scaling s_i = α_i / r_i) adds ΔW_i = s_i · B_i A_i to a layer (LoRA §4.1). A weighted
combination with weights w_i wants one adapter whose update is

    ΔW = Σ_i w_i · s_i · B_i A_i

`cat` (PEFT's add_weighted_adapter) builds it exactly: its rank is Σ r_i. `svd` forms ΔW and keeps its
best rank-r approximation in the Frobenius norm, which the Eckart–Young theorem says the truncated
SVD gives, with an error of √(Σ_{i>r} σ_i²) over the discarded singular values (notebook 01).

The combined adapters returned here carry every factor inside their matrices: they are used with
s = 1 (α = r). Copy this file to notebooks/exercises/mine/ and grade it (docs/exercises.md):

    mkdir -p notebooks/exercises/mine && cp notebooks/exercises/adapter_arithmetic.py notebooks/exercises/mine/
    pytest tests/test_exercises.py --impl=mine -k adapter_arithmetic

Shape legend:
    A_i (r_i, d_in)   B_i (d_out, r_i)   R = Σ r_i   ΔW (d_out, d_in)
"""

import torch  # noqa: F401  (you will need it)


def combine_cat(As, Bs, weights, scalings):
    """One adapter (A (R, d_in), B (d_out, R)) with B A = Σ_i w_i · s_i · B_i A_i exactly.

    Args:
        As: list of A_i (r_i, d_in). Bs: list of B_i (d_out, r_i), the same length.
        weights: list of w_i (floats). scalings: list of s_i = α_i / r_i (floats).
    """
    raise NotImplementedError


def combine_svd(delta, rank):
    """The best rank-`rank` factorisation of ΔW (Eckart–Young): (A (rank, d_in), B (d_out, rank)) whose
    product B A is the closest rank-`rank` matrix to `delta` in the Frobenius norm.

    Args:
        delta: (d_out, d_in) ΔW, e.g. Σ_i w_i · s_i · B_i A_i. rank: 1 <= rank <= min(d_out, d_in).
    """
    raise NotImplementedError
