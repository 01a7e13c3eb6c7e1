"""Worked solution of notebooks/exercises/adapter_arithmetic.py: combining adapters (`cat`, `svd`)."""

import torch


def combine_cat(As, Bs, weights, scalings):
    # w_i·s_i goes into A_i's rows: (Σ r_i, d_in) and (d_out, Σ r_i), whose product is Σ w_i s_i B_i A_i
    A = torch.cat([w * s * A_i for A_i, w, s in zip(As, weights, scalings, strict=True)], dim=0)
    B = torch.cat(list(Bs), dim=1)
    return A, B


def combine_svd(delta, rank):
    # Eckart–Young: the truncated SVD is the best rank-r approximation in the Frobenius norm
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)  # (d_out, k), (k,), (k, d_in)
    return Vh[:rank].clone(), U[:, :rank] * S[:rank]          # A (rank, d_in), B (d_out, rank)
