"""Exercise: combining LoRA adapters into one (the `cat` and `svd` combinations of adapter arithmetic).

Adapter i (A_i (r_i, d_in), B_i (d_out, r_i), scaling s_i = α_i / r_i) adds ΔW_i = s_i · B_i A_i.
A weighted combination with weights w_i wants one adapter whose update is

    ΔW = Σ_i w_i · s_i · B_i A_i

`cat` builds it exactly by stacking: its rank is Σ r_i. `svd` forms ΔW and keeps its best rank-r
approximation, which by the Eckart–Young theorem is the truncated SVD: with ΔW = U S Vᵀ,
B = U_r S_r and A = V_rᵀ, and the error ‖ΔW − B A‖_F = √(Σ_{i>r} σ_i²) is the smallest any rank-r
matrix can reach.

The combined adapters returned here carry the scaling inside their matrices (use them with s = 1,
i.e. α = r). Grade with `pytest tests/test_exercises.py --impl=mine -k adapter_arithmetic`.

Shape legend:
    A_i (r_i, d_in)   B_i (d_out, r_i)   R = Σ r_i   ΔW (d_out, d_in)
"""

import torch  # noqa: F401  (you will need it)


def combine_cat(As, Bs, weights, scalings):
    """Stack adapters so that B A = Σ_i w_i · s_i · B_i A_i exactly.

    Args:
        As: list of A_i (r_i, d_in). Bs: list of B_i (d_out, r_i), the same length.
        weights: list of w_i (floats). scalings: list of s_i = α_i / r_i (floats).
    Returns:
        (A (R, d_in), B (d_out, R)). Hint: B A = Σ_i B_i A_i when A stacks the A_i as rows and B the
        B_i as columns; put each w_i · s_i into A_i's rows (or split it between A_i and B_i).
    """
    raise NotImplementedError


def combine_svd(delta, rank):
    """The best rank-`rank` factorisation of ΔW (Eckart–Young): (A (rank, d_in), B (d_out, rank)).

    Args:
        delta: (d_out, d_in) ΔW, e.g. Σ_i w_i · s_i · B_i A_i. rank: 1 <= rank <= min(d_out, d_in).
    Returns:
        A = V_rᵀ (the top `rank` right singular vectors, as rows), B = U_r S_r; use torch.linalg.svd
        with full_matrices=False.
    """
    raise NotImplementedError
