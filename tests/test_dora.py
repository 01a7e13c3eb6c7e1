"""DoRA's decomposition (lora/dora.py): identity at initialisation, merge equivalence, gradients, PEFT parity."""

import pathlib

import torch
import torch.nn.functional as F

from lora.dora import (
    dora_forward,
    dora_magnitude_init,
    dora_scale,
    dora_unmerge_weight,
    dora_weight,
    weight_norm,
)
from lora.io.safetensors_io import load_file

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "peft_variants" / "dora_layer.safetensors"
D_IN, D_OUT, R, S = 6, 5, 2, 1.5


def layer(dtype=torch.float64):
    """W0, bias, A (random) and B (random, so the adapter is not a no-op)."""
    W = torch.randn(D_OUT, D_IN, dtype=dtype)
    return W, torch.randn(D_OUT, dtype=dtype), torch.randn(R, D_IN, dtype=dtype), torch.randn(D_OUT, R, dtype=dtype)


def test_weight_norm_is_one_norm_per_output_row():
    W = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])  # (d_out=3, d_in=2)
    assert torch.equal(weight_norm(W), torch.tensor([5.0, 2.0, 1.0]))


def test_dora_at_init_equals_base_output_exactly():
    W, bias, A, _ = layer(torch.float32)
    B = torch.zeros(D_OUT, R)
    m = dora_magnitude_init(W)
    x = torch.randn(3, 4, D_IN)
    assert torch.equal(dora_forward(x, W, bias, A, B, S, m), F.linear(x, W, bias))


def test_magnitude_init_keeps_a_nonzero_adapter_weight():
    W, _, A, B = layer()
    delta = S * B @ A
    m = dora_magnitude_init(W, delta)
    torch.testing.assert_close(dora_weight(W, delta, m), W + delta, rtol=0, atol=1e-12)


def test_merged_and_unmerged_outputs_agree():
    W, bias, A, B = layer(torch.float32)
    m = dora_magnitude_init(W) * (1 + 0.2 * torch.rand(D_OUT))  # trained-like magnitudes
    x = torch.randn(3, 4, D_IN)
    merged = F.linear(x, dora_weight(W, S * B @ A, m), bias)
    unmerged = dora_forward(x, W, bias, A, B, S, m)
    assert not torch.allclose(unmerged, F.linear(x, W, bias), atol=1e-2), "the adapter must change the output"
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)


def test_unmerge_inverts_merge():
    W, _, A, B = layer()
    delta, m = S * B @ A, torch.rand(D_OUT, dtype=torch.float64) + 0.5
    merged = dora_weight(W, delta, m)
    torch.testing.assert_close(dora_unmerge_weight(merged, delta, m, weight_norm(W + delta)), W, rtol=0, atol=1e-12)


def test_magnitude_gradient_is_direction_times_input():
    # W0 rows have norms 5 and 2; B = 0, m = ‖W0‖, x = (1, 1), L = sum(y):
    # ∂L/∂m_i = (W0 x)_i / ‖W0_i‖ = (3 + 4) / 5 and 2 / 2
    W = torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=torch.float64)
    m = dora_magnitude_init(W).requires_grad_(True)
    A, B = torch.ones(1, 2, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64)
    dora_forward(torch.ones(1, 2, dtype=torch.float64), W, None, A, B, 1.0, m).sum().backward()
    assert torch.equal(m.grad, torch.tensor([1.4, 1.0], dtype=torch.float64))


def test_detached_norm_receives_no_gradient():
    W, _, A, B = layer()
    W.requires_grad_(True)
    m = torch.rand(D_OUT, dtype=torch.float64) + 0.5
    upstream = torch.randn(D_OUT, D_IN, dtype=torch.float64)
    (dora_weight(W, S * B @ A, m) * upstream).sum().backward()
    # with the norm a constant, W' = g ⊙ V is linear in V = W0 + ΔW: ∂L/∂W0 = g ⊙ upstream exactly
    g = m / weight_norm(W.detach() + S * B @ A)
    torch.testing.assert_close(W.grad, g.unsqueeze(1) * upstream, rtol=0, atol=1e-12)
    W.grad = None
    (dora_weight(W, S * B @ A, m, detach_norm=False) * upstream).sum().backward()
    assert not torch.allclose(W.grad, g.unsqueeze(1) * upstream), "the norm's own gradient must show when kept"


def test_scale_is_magnitude_over_norm():
    W, _, A, B = layer()
    m = torch.rand(D_OUT, dtype=torch.float64)
    torch.testing.assert_close(dora_scale(W, S * B @ A, m), m / (W + S * B @ A).norm(dim=1), rtol=0, atol=1e-15)


def test_dora_forward_matches_peft_layer():
    t, _ = load_file(FIXTURE)
    args = (t["weight"], t["bias"], t["lora_A"], t["lora_B"], t["scaling"].item(), t["magnitude"])
    assert not torch.allclose(t["magnitude"], weight_norm(t["weight"]))  # magnitude moved from its init
    torch.testing.assert_close(dora_forward(t["x"], *args), t["out_eval"], rtol=0, atol=1e-5)


def test_dora_forward_with_dropout_matches_peft_layer():
    t, _ = load_file(FIXTURE)
    args = (t["weight"], t["bias"], t["lora_A"], t["lora_B"], t["scaling"].item(), t["magnitude"])
    out = dora_forward(t["x"], *args, dropout=lambda x: x * t["mask"])
    assert not torch.allclose(out, t["out_eval"], atol=1e-3), "the mask must matter"
    torch.testing.assert_close(out, t["out_train"], rtol=0, atol=1e-5)
