"""The worked solutions (tests/exercise_solutions/, plain torch) compute what the library computes.

tests/test_exercises.py proves the solutions' properties; this checks them against lora/ itself on
seeded inputs, value for value (NF4 byte for byte), so a solution and the library cannot drift apart.
"""

import functools

import pytest
import torch
import torch.nn as nn
from exercise_grading import SOLUTIONS_DIR, load_module

import lora
from minigpt import GPT, GPTConfig


def solution(name):
    return load_module(SOLUTIONS_DIR / f"{name}.py")


def test_lora_layer_and_backward_match_lora_linear():
    layer = lora.LoRALinear(nn.Linear(12, 10, dtype=torch.float64), rank=4, alpha=8.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    W, b, A, B = layer.base.weight.detach(), layer.base.bias.detach(), layer.lora_A.detach(), layer.lora_B.detach()
    x = torch.randn(3, 5, 12, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    g = torch.randn_like(out)
    out.backward(g)
    assert torch.allclose(solution("lora_layer").lora_forward(x, W, b, A, B, 8.0, 4), out, atol=1e-12)
    assert torch.allclose(solution("lora_layer").delta_weight(A, B, 8.0, 4), layer.delta_weight(), atol=1e-12)
    back = solution("lora_backward")
    assert torch.allclose(back.grad_x(g, W, A, B, 2.0), x.grad, atol=1e-12)
    assert torch.allclose(back.grad_A(x, g, B, 2.0), layer.lora_A.grad, atol=1e-12)
    assert torch.allclose(back.grad_B(x, g, A, 2.0), layer.lora_B.grad, atol=1e-12)


def test_inject_matches_apply_lora():
    ours, theirs = GPT(GPTConfig.from_preset("test")), GPT(GPTConfig.from_preset("test"))
    theirs.load_state_dict(ours.state_dict())
    solution("inject").inject_lora(ours, ["c_attn", "c_fc"], functools.partial(lora.LoRALinear, rank=2, alpha=4))
    lora.apply_lora(theirs, rank=2, alpha=4, targets=["c_attn", "c_fc"])
    trained = [n for n, p in theirs.named_parameters() if p.requires_grad]
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == trained and trained
    assert lora.count_parameters(ours) == lora.count_parameters(theirs)


def test_nf4_solutions_give_the_library_bytes():
    nf4, dq = solution("nf4"), solution("double_quant")
    assert torch.equal(nf4.nf4_codebook(), lora.nf4_codebook())
    w = torch.randn(37, 64)  # 2368 values: 37 blocks, the last one partial at blocksize 128
    for blocksize in (64, 128):
        q = lora.quantize_nf4(w, blocksize=blocksize)
        packed, absmax = nf4.quantize_blockwise(w, blocksize)
        assert torch.equal(packed, q.packed) and torch.equal(absmax, q.absmax)
        assert torch.equal(nf4.dequantize_blockwise(packed, absmax, blocksize, w.shape), lora.dequantize_nf4(q))
    absmax = lora.quantize_nf4(torch.randn(64 * 300)).absmax
    for got, want in zip(dq.double_quantize(absmax, 256), lora.double_quantize(absmax, 256), strict=True):
        assert torch.equal(got, want)
    q = lora.quantize_nf4(torch.randn(64 * 256 * 2), double_quant=True)
    assert dq.bits_per_parameter(64, 256) == pytest.approx(lora.bits_per_parameter(q) - 32 / q.packed.numel() / 2)


def test_quantized_linear_and_dora_match_the_library():
    nf4 = solution("nf4")
    linear = nn.Linear(64, 48)
    ours = solution("quantized_linear").LinearNF4(linear, nf4.quantize_blockwise, nf4.dequantize_blockwise, 64)
    theirs = lora.LinearNF4.from_linear(linear, blocksize=64, double_quant=False)
    x = torch.randn(2, 3, 64)
    assert torch.equal(ours(x), theirs(x))
    W, A, B, m = torch.randn(10, 12), torch.randn(4, 12), torch.randn(10, 4), torch.rand(10) + 0.5
    b = torch.randn(10)
    x = torch.randn(5, 12)
    want = lora.dora_forward(x, W, b, A, B, 2.0, m)
    assert torch.allclose(solution("dora").dora_forward(x, W, b, A, B, 8.0, 4, m), want, atol=1e-5)
    assert torch.allclose(solution("dora").weight_norm(W), lora.weight_norm(W))
