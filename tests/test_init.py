"""LoRA initialisations (lora/init.py): default, Gaussian, PiSSA and QPiSSA, with PEFT's PiSSA as reference."""

import math
import pathlib

import pytest
import torch

from lora.init import check_init, default_init, gaussian_init, lora_init, pissa_init
from lora.io.safetensors_io import load_file
from lora.quant.qpissa import pissa_quantization_error

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "peft_variants" / "pissa_init.safetensors"


def test_default_init_is_uniform_within_kaiming_bound_and_b_zero():
    A, B = default_init(8, 400, 30, generator=torch.Generator().manual_seed(1))
    bound = 1 / math.sqrt(400)  # kaiming_uniform(a=√5): U(−1/√d_in, 1/√d_in)
    assert A.shape == (8, 400) and B.shape == (30, 8) and torch.equal(B, torch.zeros(30, 8))
    assert A.abs().max() <= bound and A.abs().max() > 0.95 * bound
    assert abs(A.var().item() - bound**2 / 3) < 0.1 * bound**2 / 3  # the variance of U(−b, b) is b²/3


def test_gaussian_init_has_std_one_over_rank_and_b_zero():
    A, B = gaussian_init(4, 5000, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(B, torch.zeros(3, 4))
    assert abs(A.std().item() - 1 / 4) < 0.01 and abs(A.mean().item()) < 0.01


def test_pissa_at_init_reproduces_w0_to_float32_rounding():
    W = torch.randn(24, 16)
    A, B, residual = pissa_init(W, rank=4, scaling=2.0)
    torch.testing.assert_close(residual + 2.0 * B @ A, W, rtol=0, atol=1e-5)
    x = torch.randn(3, 16)
    torch.testing.assert_close(x @ residual.T + 2.0 * (x @ A.T) @ B.T, x @ W.T, rtol=0, atol=1e-5)


def test_pissa_adapter_is_scaled_truncated_svd():
    W = torch.randn(12, 9, dtype=torch.float64)
    A, B, residual = pissa_init(W, rank=3, scaling=0.5)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    truncated = U[:, :3] @ torch.diag(S[:3]) @ Vh[:3]
    torch.testing.assert_close(0.5 * B @ A, truncated, rtol=0, atol=1e-12)
    # the residual holds exactly the tail: its singular values are S[3:]
    torch.testing.assert_close(torch.linalg.svdvals(residual)[:6], S[3:], rtol=0, atol=1e-12)
    # √S split evenly: A's rows and B's columns have the same norm, √(S_i / s)
    torch.testing.assert_close(A.norm(dim=1), torch.sqrt(S[:3] / 0.5), rtol=0, atol=1e-12)
    torch.testing.assert_close(B.norm(dim=0), torch.sqrt(S[:3] / 0.5), rtol=0, atol=1e-12)


def test_pissa_niter_approximates_exact_pissa_on_low_rank_weight():
    W = torch.randn(40, 3, dtype=torch.float64) @ torch.randn(3, 30, dtype=torch.float64)  # rank 3
    A, B, residual = pissa_init(W, rank=3, scaling=1.0, niter=2)
    assert residual.abs().max() < 1e-8  # a rank-3 weight is captured whole


def test_pissa_matches_peft_up_to_singular_vector_signs():
    t, _ = load_file(FIXTURE)
    names = sorted({k.rsplit(".", 1)[0] for k in t})
    assert names, "the fixture must hold layers"
    for name in names:
        W0, A0, B0 = t[f"{name}.W0"], t[f"{name}.lora_A"], t[f"{name}.lora_B"]
        A, B, residual = pissa_init(W0, rank=A0.shape[0], scaling=4 / 2)  # r=2, alpha=4 in the fixture
        signs = torch.sign((A * A0).sum(dim=1))  # an SVD fixes each singular pair only up to a common sign
        torch.testing.assert_close(signs.unsqueeze(1) * A, A0, rtol=0, atol=1e-5)
        torch.testing.assert_close(B * signs, B0, rtol=0, atol=1e-5)
        torch.testing.assert_close(residual, t[f"{name}.residual"], rtol=0, atol=1e-5)


def test_qpissa_quantization_error_below_plain_nf4():
    low = torch.randn(64, 4) @ torch.randn(4, 128) * 2.0  # a dominant rank-4 part ...
    W = low + 0.05 * torch.randn(64, 128)  # ... plus small full-rank noise
    plain, pissa = pissa_quantization_error(W, rank=4, scaling=1.0)
    assert pissa < 0.5 * plain, (plain, pissa)


def test_lora_init_default_keeps_base_and_pissa_changes_it():
    W = torch.randn(6, 5)
    A, B, base = lora_init("gaussian", W, 2, 1.0)
    assert base is W and A.shape == (2, 5) and torch.equal(B, torch.zeros(6, 2))
    A, B, base = lora_init("pissa_niter_3", W, 2, 1.0)
    assert not torch.equal(base, W) and B.abs().sum() > 0


@pytest.mark.parametrize("bad", ["pissa_niter_", "pissa_niter_-1", "olora", "", None, True])
def test_unknown_init_names_raise(bad):
    with pytest.raises(ValueError, match="init="):
        check_init(bad)


def test_pissa_rank_too_large_raises():
    with pytest.raises(ValueError, match="rank=6 exceeds"):
        pissa_init(torch.randn(5, 8), 6, 1.0)
