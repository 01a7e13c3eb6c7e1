"""What a learned low-rank update spans, and how much it amplifies: the LoRA paper's §7.2 and §7.3.

    §7.2  subspace similarity   φ(A1, A2, i, j) = ‖U_iᵀ U_j‖²_F / min(i, j)
    §7.3  amplification         ‖ΔW‖_F / ‖U_rᵀ W V_r‖_F,  U_r, V_r the top-r singular vectors of ΔW

Both read the trained matrices only (A, B or ΔW = s·B·A, and the frozen W), so they work on any
adapter. φ is 1 when the two subspaces coincide (the smaller one lies in the larger) and 0 when they
are orthogonal; two random subspaces of R^d give max(i, j)/d on average, which is not small when d
is (see random_subspace_similarity).

Shape legend:
    r, r1, r2  ranks          d_in / d_out  sizes of the adapted layer
    d          the space the subspaces live in (d_in for A's right-singular vectors)
    k          number of singular directions kept
"""

import torch

from lora.checks import check_int


def _check_matrix(name, m):
    if not isinstance(m, torch.Tensor) or m.dim() != 2 or not m.is_floating_point():
        raise ValueError(f"{name} must be a 2-d floating-point tensor, got "
                         f"{tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__}")
    if not torch.isfinite(m).all():
        raise ValueError(f"{name} holds NaN or inf values")


def right_singular_vectors(A, k=None):
    """The top-k right-singular vectors of A = U S Vᵀ as columns: (r, d) -> (d, k), in float64.

    LoRA §7.2 calls them "the right-singular unitary matrix U_A" of the learned A (r, d_in): the
    directions of the input space the adapter reads. k defaults to min(r, d), all of them.
    """
    _check_matrix("A", A)
    k = min(A.shape) if k is None else check_int("k", k)
    if k > min(A.shape):
        raise ValueError(f"k={k}: A of shape {tuple(A.shape)} has at most {min(A.shape)} singular directions")
    _, _, Vh = torch.linalg.svd(A.detach().double(), full_matrices=False)  # Vh (min(r, d), d)
    return Vh[:k].T  # (d, k), orthonormal columns, largest singular value first


def _check_bases(U1, U2):
    _check_matrix("U1", U1)
    _check_matrix("U2", U2)
    if U1.shape[0] != U2.shape[0]:
        raise ValueError(f"U1 {tuple(U1.shape)} and U2 {tuple(U2.shape)}: the subspaces must live in one space "
                         "(the same number of rows)")


def subspace_similarity(U1, U2, i, j):
    """φ(i, j) = ‖U1[:, :i]ᵀ U2[:, :j]‖²_F / min(i, j) (Hu et al., 2021, LoRA §7.2, Eq. 4).

    The squared cosines of the principal angles between the span of U1's first i columns and U2's
    first j, averaged over the min(i, j) of them: 1 when one subspace contains the other, 0 when they
    are orthogonal. U1 (d, k1) and U2 (d, k2) have orthonormal columns (right_singular_vectors).

    Raises:
        ValueError: i or j outside 1..k, or bases of different spaces.
    """
    _check_bases(U1, U2)
    for name, n, U in (("i", i, U1), ("j", j, U2)):
        if check_int(name, n) > U.shape[1]:
            raise ValueError(f"{name}={n}: the basis has only {U.shape[1]} columns")
    M = U1[:, :i].double().T @ U2[:, :j].double()  # (i, j) cosines between the basis vectors
    return (M.pow(2).sum() / min(i, j)).item()


def subspace_similarity_grid(U1, U2):
    """φ(i, j) for every i = 1..k1 and j = 1..k2 at once: a (k1, k2) float64 tensor (LoRA Figure 3).

    ‖U1[:, :i]ᵀ U2[:, :j]‖²_F is the sum of the squared cosines in the top-left i × j corner of
    U1ᵀ U2, so two cumulative sums give every corner; entry [i-1, j-1] is subspace_similarity(U1, U2, i, j).
    """
    _check_bases(U1, U2)
    corner = (U1.double().T @ U2.double()).pow(2).cumsum(0).cumsum(1)  # (k1, k2)
    i = torch.arange(1, U1.shape[1] + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, U2.shape[1] + 1, dtype=torch.float64)[None, :]
    return corner / torch.minimum(i, j)


def random_subspace_similarity(i, j, d):
    """E[φ(i, j)] for an i- and a j-dimensional subspace of R^d, one of them uniformly random: max(i, j)/d.

    A uniformly random j-dimensional projection P has E[P] = (j/d)·I, so E‖U_iᵀ U_j‖²_F =
    tr(U_iᵀ E[P] U_i) = i·j/d; divided by min(i, j) this is max(i, j)/d. The LoRA paper's d = 12,288
    makes it negligible; at d = 128 a 64-dimensional subspace already overlaps any direction by 1/2.
    """
    for name, n in (("i", i), ("j", j)):
        check_int(name, n)
    if check_int("d", d) < max(i, j):
        raise ValueError(f"d={d}: a space of {d} dimensions has no {max(i, j)}-dimensional subspace")
    return max(i, j) / d


def top_singular_vectors(M, k):
    """The top-k left and right singular vectors of M = U S Vᵀ: (d_out, d_in) -> ((d_out, k), (d_in, k)), float64."""
    _check_matrix("M", M)
    if check_int("k", k) > min(M.shape):
        raise ValueError(f"k={k}: a {tuple(M.shape)} matrix has at most {min(M.shape)} singular directions")
    U, _, Vh = torch.linalg.svd(M.detach().double(), full_matrices=False)
    return U[:, :k], Vh[:k].T


def projection_norm(W, U, V):
    """‖Uᵀ W V‖_F: how much of W lies in the directions U (d_out, k) on the left and V (d_in, k) on the right.

    LoRA §7.3 writes it ‖UᵀWVᵀ‖_F with V as a (k, d_in) matrix of rows; here V holds columns. With U, V
    W's own top-k singular vectors it is √(σ1² + ... + σk²), the most any k directions can capture.
    """
    _check_matrix("W", W)
    if U.shape[0] != W.shape[0] or V.shape[0] != W.shape[1] or U.shape[1] != V.shape[1]:
        raise ValueError(f"U {tuple(U.shape)}, W {tuple(W.shape)}, V {tuple(V.shape)}: need U (d_out, k), "
                         "W (d_out, d_in), V (d_in, k)")
    return torch.linalg.matrix_norm(U.double().T @ W.detach().double() @ V.double()).item()


def amplification_factor(delta_w, W, k):
    """‖ΔW‖_F / ‖U_kᵀ W V_k‖_F with U_k, V_k the top-k singular vectors of ΔW (LoRA §7.3, Table 7).

    How strongly the update amplifies the directions it chose, compared with how much of the frozen W
    already lies there. The paper finds about 21.5 for ΔW_q at r = 4 and about 2 at r = 64 on GPT-3
    175B: a low-rank ΔW amplifies directions that W has but does not emphasise. k is the number of
    directions compared, the paper's r (the adapter's rank).
    """
    _check_matrix("delta_w", delta_w)
    _check_matrix("W", W)
    if delta_w.shape != W.shape:
        raise ValueError(f"delta_w {tuple(delta_w.shape)} and W {tuple(W.shape)} must have the same shape")
    U, V = top_singular_vectors(delta_w, k)
    return torch.linalg.matrix_norm(delta_w.detach().double()).item() / projection_norm(W, U, V)


def random_orthonormal(d, k, generator=None):
    """k orthonormal columns spanning a uniformly random subspace of R^d: (d, k) float64 (QR of a Gaussian).

    The "random" row of LoRA's Table 7: how much of W an arbitrary choice of k directions captures.
    """
    if check_int("k", k) > check_int("d", d):
        raise ValueError(f"k={k}: R^{d} has at most {d} orthonormal directions")
    Q, R = torch.linalg.qr(torch.randn(d, k, dtype=torch.float64, generator=generator))
    return Q * torch.sign(torch.diagonal(R))  # the sign fix makes the distribution exactly uniform (Haar)
