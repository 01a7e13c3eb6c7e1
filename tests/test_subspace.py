"""LoRA §7.2's subspace similarity and §7.3's amplification factor (lora/subspace.py), on float64 matrices
whose answers are known: shared, orthogonal, nested and random subspaces, and a W built from its SVD."""

import math

import pytest
import torch

from lora.subspace import (
    amplification_factor,
    projection_norm,
    random_orthonormal,
    random_subspace_similarity,
    right_singular_vectors,
    subspace_similarity,
    subspace_similarity_grid,
    top_singular_vectors,
)

D = 32


def _basis(k, seed=0):
    return random_orthonormal(D, k, generator=torch.Generator().manual_seed(seed))


def test_identical_subspaces_give_one():
    U = _basis(6)
    for i in range(1, 7):
        assert subspace_similarity(U, U, i, i) == pytest.approx(1.0, abs=1e-12)


def test_a_subspace_inside_a_larger_one_gives_one():
    # span(U[:, :i]) lies in span(U[:, :j]) for i <= j, so every one of the min(i, j) angles is zero
    U = _basis(8)
    assert subspace_similarity(U[:, :3], U, 3, 8) == pytest.approx(1.0, abs=1e-12)


def test_orthogonal_subspaces_give_zero():
    Q = _basis(10)
    assert subspace_similarity(Q[:, :4], Q[:, 4:], 4, 6) == pytest.approx(0.0, abs=1e-12)


def test_similarity_is_symmetric():
    U1, U2 = _basis(5, seed=1), _basis(7, seed=2)
    for i, j in ((1, 1), (2, 7), (5, 3)):
        assert subspace_similarity(U1, U2, i, j) == pytest.approx(subspace_similarity(U2, U1, j, i), abs=1e-12)


def test_similarity_of_one_direction_is_its_squared_cosine():
    e1, e2 = torch.zeros(D, 1, dtype=torch.float64), torch.zeros(D, 1, dtype=torch.float64)
    e1[0], e2[0], e2[1] = 1.0, math.cos(0.3), math.sin(0.3)
    assert subspace_similarity(e1, e2, 1, 1) == pytest.approx(math.cos(0.3) ** 2, abs=1e-12)


def test_grid_entries_equal_the_single_similarity():
    U1, U2 = _basis(4, seed=3), _basis(9, seed=4)
    grid = subspace_similarity_grid(U1, U2)
    assert grid.shape == (4, 9)
    for i in range(1, 5):
        for j in range(1, 10):
            assert grid[i - 1, j - 1].item() == pytest.approx(subspace_similarity(U1, U2, i, j), abs=1e-12)


def test_random_subspaces_average_max_i_j_over_d():
    # E phi = max(i, j) / d: 200 pairs of random subspaces agree with it to a few percent
    g = torch.Generator().manual_seed(5)
    phis = [subspace_similarity(random_orthonormal(D, 2, g), random_orthonormal(D, 8, g), 2, 8) for _ in range(200)]
    assert sum(phis) / len(phis) == pytest.approx(random_subspace_similarity(2, 8, D), rel=0.05)
    assert random_subspace_similarity(2, 8, D) == 8 / D


def test_right_singular_vectors_of_A_span_its_rows():
    A = torch.randn(3, D, dtype=torch.float64)
    V = right_singular_vectors(A)
    assert V.shape == (D, 3)
    assert torch.allclose(V.T @ V, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(A @ V @ V.T, A, atol=1e-12)  # projecting A's rows on span(V) changes nothing


def test_right_singular_vectors_put_the_largest_singular_value_first():
    V = _basis(3, seed=6)
    A = torch.diag(torch.tensor([1.0, 5.0, 2.0], dtype=torch.float64)) @ V.T  # singular values 1, 5, 2 on V's columns
    top = right_singular_vectors(A, k=1)
    assert subspace_similarity(top, V[:, 1:2], 1, 1) == pytest.approx(1.0, abs=1e-12)


def _from_svd(U, S, V):
    return U @ torch.diag(S) @ V.T


def test_projection_on_w_own_top_directions_is_the_root_sum_of_their_squared_singular_values():
    U, V = _basis(6, seed=7), _basis(6, seed=8)
    S = torch.tensor([9.0, 7.0, 3.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    W = _from_svd(U, S, V)
    Uk, Vk = top_singular_vectors(W, 2)
    assert projection_norm(W, Uk, Vk) == pytest.approx(math.sqrt(81 + 49), rel=1e-12)


def test_amplification_of_an_update_along_w_weakest_direction():
    # ΔW = 4 u6 v6ᵀ points where W has singular value 0.5: ‖ΔW‖ / ‖u6ᵀ W v6‖ = 4 / 0.5
    U, V = _basis(6, seed=7), _basis(6, seed=8)
    S = torch.tensor([9.0, 7.0, 3.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    W = _from_svd(U, S, V)
    delta = 4.0 * U[:, 5:] @ V[:, 5:].T
    assert amplification_factor(delta, W, 1) == pytest.approx(8.0, rel=1e-10)
    assert amplification_factor(4.0 * U[:, :1] @ V[:, :1].T, W, 1) == pytest.approx(4.0 / 9.0, rel=1e-10)


def test_random_orthonormal_has_orthonormal_columns():
    Q = random_orthonormal(D, 5, generator=torch.Generator().manual_seed(9))
    assert torch.allclose(Q.T @ Q, torch.eye(5, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("call, match", [
    (lambda: subspace_similarity(_basis(3), _basis(3), 4, 1), "i=4"),
    (lambda: subspace_similarity(_basis(3), _basis(3), 1, 0), "j=0"),
    (lambda: subspace_similarity(_basis(3), torch.randn(D + 1, 2, dtype=torch.float64), 1, 1), "one space"),
    (lambda: right_singular_vectors(torch.randn(3, D), k=4), "k=4"),
    (lambda: right_singular_vectors(torch.ones(3, D, dtype=torch.long)), "floating-point"),
    (lambda: amplification_factor(torch.randn(4, 5), torch.randn(5, 4), 1), "same shape"),
    (lambda: amplification_factor(torch.full((4, 4), float("nan")), torch.randn(4, 4), 1), "NaN"),
    (lambda: random_subspace_similarity(3, 40, D), "d=32"),
    (lambda: random_orthonormal(4, 5), "k=5"),
])
def test_bad_input_raises_naming_it(call, match):
    with pytest.raises(ValueError, match=match):
        call()
