"""LoRA's hand-written backward (lora.backward) is the derivative of its forward.

gradcheck compares the backward with finite differences in float64; the named gradient functions are
compared with autograd's gradients of the plain formula h = x W0ᵀ + b + s (x Aᵀ) Bᵀ; the LoRA layer's
training path (which runs through LoRAFunction) is compared with the same formula, dropout included.
The shapes are chosen on both sides of folding_pays, so both ways of computing h are checked.
"""

import pytest
import torch
import torch.nn as nn
from torch.autograd import gradcheck

from lora.backward import folded_weight, folding_pays, grad_A, grad_B, grad_x, lora_linear
from lora.layer import LoRALinear

F64 = torch.float64
# (positions N, d_in, d_out): N below both sizes (nothing folds), above both (forward and backward
# fold), and between them (only one of the two passes folds)
SHAPES = [(3, 5, 7), (20, 5, 7), (10, 5, 30), (10, 30, 5)]


def _inputs(n, d_in, d_out, rank=3, bias=True):
    x = torch.randn(n, d_in, dtype=F64, requires_grad=True)
    W = torch.randn(d_out, d_in, dtype=F64)
    b = torch.randn(d_out, dtype=F64) if bias else None
    A = torch.randn(rank, d_in, dtype=F64, requires_grad=True)
    B = torch.randn(d_out, rank, dtype=F64, requires_grad=True)  # nonzero: every gradient term is live
    return x, W, b, A, B


def _reference(x, W, b, A, B, s, x_lora=None):
    """The formula, differentiated by autograd."""
    x_lora = x if x_lora is None else x_lora
    out = x @ W.T + s * (x_lora @ A.T) @ B.T
    return out if b is None else out + b


@pytest.mark.parametrize("n, d_in, d_out", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_hand_written_backward_passes_gradcheck(n, d_in, d_out, bias):
    x, W, b, A, B = _inputs(n, d_in, d_out, bias=bias)
    assert gradcheck(lambda x, A, B: lora_linear(x, W, b, A, B, 0.7), (x, A, B))


@pytest.mark.parametrize("n, d_in, d_out", SHAPES)
def test_hand_written_backward_with_a_separate_adapter_input_passes_gradcheck(n, d_in, d_out):
    # the adapter's input is dropout(x) in training: its gradient is returned separately from x's
    x, W, b, A, B = _inputs(n, d_in, d_out)
    x_lora = torch.randn(n, d_in, dtype=F64, requires_grad=True)
    assert gradcheck(lambda x, A, B, xl: lora_linear(x, W, b, A, B, 0.7, xl), (x, A, B, x_lora))


def test_named_gradients_equal_autograds():
    x, W, b, A, B = _inputs(4 * 6, 5, 7)
    x3, s = x.detach().reshape(4, 6, 5), 0.7
    g = torch.randn(4, 6, 7, dtype=F64)
    xr = x3.clone().requires_grad_(True)
    _reference(xr, W, b, A, B, s).backward(g)
    torch.testing.assert_close(grad_x(g, W, A.detach(), B.detach(), s), xr.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_A(x3, g, B.detach(), s), A.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_B(x3, g, A.detach(), s), B.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n, d_in, d_out", SHAPES)
def test_forward_equals_the_formula_and_the_frozen_weight_gets_no_gradient(n, d_in, d_out):
    x, W, b, A, B = _inputs(n, d_in, d_out)
    torch.testing.assert_close(lora_linear(x, W, b, A, B, 0.7), _reference(x, W, b, A, B, 0.7), rtol=1e-12, atol=1e-12)
    lora_linear(x, W, b, A, B, 0.7).sum().backward()
    assert W.grad is None and b.grad is None and A.grad is not None and B.grad is not None


def test_the_function_refuses_a_trainable_base_weight():
    x, W, b, A, B = _inputs(3, 5, 7)
    with pytest.raises(ValueError, match="frozen"):
        lora_linear(x, W.requires_grad_(True), b, A, B, 1.0)


def test_folded_weight_keeps_the_base_layout_so_a_zero_update_gives_the_base_output_exactly():
    # the GPT stores its projections transposed (minigpt.weight_layout): the folded weight must match
    # that layout, or x Wᵀ would run a different kernel and round differently from the frozen layer
    for W in (torch.randn(7, 5), torch.randn(5, 7).T):
        folded = folded_weight(W, torch.randn(3, 5), torch.zeros(7, 3), 2.0)
        assert folded.stride() == W.stride() and torch.equal(folded, W)
    assert folding_pays(2048, 512) and not folding_pays(1, 128)


def _layer(dropout):
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(6, 9).double(), rank=2, alpha=4, dropout=dropout)
    nn.init.normal_(layer.lora_B)  # B ≠ 0, or B's gradient terms would vanish
    return layer


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_layer_training_gradients_equal_autograds_of_the_formula(dropout):
    layer = _layer(dropout).train()
    x = torch.randn(2, 13, 6, dtype=F64, requires_grad=True)  # 26 positions: both passes fold without dropout
    g = torch.randn(2, 13, 9, dtype=F64)
    torch.manual_seed(1)
    layer(x).backward(g)
    got = [t.grad.clone() for t in (x, layer.lora_A, layer.lora_B)]
    for t in (x, layer.lora_A, layer.lora_B):
        t.grad = None
    torch.manual_seed(1)  # the same dropout mask
    x_lora = layer.dropout(x)
    _reference(x, layer.base.weight, layer.base.bias, layer.lora_A, layer.lora_B, layer.scaling, x_lora).backward(g)
    want = [x.grad, layer.lora_A.grad, layer.lora_B.grad]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert layer.base.weight.grad is None
