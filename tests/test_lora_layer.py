"""LoRALinear (lora/layer.py): the LoRA paper's identities, each checked on one small layer."""

import math

import pytest
import torch
import torch.nn as nn

from lora.adapter import lora_scaling
from lora.layer import LoRALinear

D_IN, D_OUT, RANK, ALPHA = 12, 10, 4, 8


def make_layer(dtype=torch.float64, dropout=0.0, bias=True, use_rslora=False):
    return LoRALinear(nn.Linear(D_IN, D_OUT, bias=bias, dtype=dtype), RANK, ALPHA, dropout, use_rslora)


def perturb_b(layer):
    """Give B nonzero values: with B = 0 every identity below would hold trivially."""
    with torch.no_grad():
        layer.lora_B.normal_()
    assert layer.delta_weight().abs().max() > 0.1


class FakeQuantLinear(nn.Module):
    """Stands in for a quantized linear layer: integer storage, dequantize_weight(), output in x's dtype."""

    def __init__(self, weight, bias):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("codes", torch.round(weight * 8).to(torch.int8))  # 1/8 steps
        self.bias = nn.Parameter(bias.clone())

    def dequantize_weight(self, dtype=None):
        return self.codes.to(dtype or torch.float32) / 8

    def forward(self, x):
        return x @ self.dequantize_weight(x.dtype).T + self.bias.to(x.dtype)


def test_shapes_and_init_follow_the_paper():
    layer = make_layer()
    assert layer.lora_A.shape == (RANK, D_IN) and layer.lora_B.shape == (D_OUT, RANK)
    assert torch.count_nonzero(layer.lora_B) == 0
    # Kaiming-uniform with a=sqrt(5) draws from U(-1/sqrt(d_in), 1/sqrt(d_in))
    assert layer.lora_A.abs().max() <= 1 / math.sqrt(D_IN) and layer.lora_A.abs().max() > 0


def test_zero_init_is_identity():
    layer = make_layer()
    x = torch.randn(3, 5, D_IN, dtype=torch.float64)
    assert torch.equal(layer(x), layer.base(x))


def test_grad_A_is_zero_at_init_grad_B_is_not():
    layer = make_layer()
    layer(torch.randn(6, D_IN, dtype=torch.float64)).pow(2).sum().backward()
    assert torch.count_nonzero(layer.lora_A.grad) == 0
    assert layer.lora_B.grad.abs().max() > 0


def test_base_parameters_are_frozen():
    layer = make_layer()
    assert not any(p.requires_grad for p in layer.base.parameters())
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad


def test_scaling_is_alpha_over_r():
    assert make_layer().scaling == ALPHA / RANK
    assert lora_scaling(16, 32) == 2.0


def test_scaling_is_alpha_over_sqrt_r_with_rslora():
    assert make_layer(use_rslora=True).scaling == ALPHA / math.sqrt(RANK)
    assert lora_scaling(16, 32, use_rslora=True) == 8.0


def test_forward_equals_base_plus_scaled_low_rank_path():
    layer = make_layer()
    perturb_b(layer)
    x = torch.randn(7, D_IN, dtype=torch.float64)
    expected = layer.base(x) + (ALPHA / RANK) * x @ (layer.lora_B @ layer.lora_A).T
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)


def test_forward_never_materialises_delta_weight(monkeypatch):
    layer = make_layer()
    monkeypatch.setattr(layer, "delta_weight", lambda: pytest.fail("forward built ΔW"))
    layer(torch.randn(2, D_IN, dtype=torch.float64))


def test_delta_weight_rank_at_most_r():
    layer = LoRALinear(nn.Linear(40, 30, dtype=torch.float64), rank=3, alpha=6)
    perturb_b(layer)
    assert layer.delta_weight().shape == (30, 40)
    assert torch.linalg.matrix_rank(layer.delta_weight()).item() == 3  # <= r, and = r for random A, B


def test_trainable_params_equal_r_times_din_plus_dout():
    layer = make_layer()
    trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    assert trainable == RANK * (D_IN + D_OUT)


def test_merge_adds_scaled_BA_hand_checked():
    # integers and scaling 2 (alpha 4, r 2): every product is exact, so equality is exact
    base = nn.Linear(3, 2, bias=False, dtype=torch.float64)
    layer = LoRALinear(base, rank=2, alpha=4)
    with torch.no_grad():
        base.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]))
        layer.lora_A.copy_(torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]))
        layer.lora_B.copy_(torch.tensor([[1.0, 0.0], [1.0, 2.0]]))
    # B A = [[1, 1, 0], [1, 3, 2]]; W + 2 B A = [[3, 2, 2], [2, 7, 4]]
    layer.merge()
    assert torch.equal(base.weight, torch.tensor([[3.0, 2.0, 2.0], [2.0, 7.0, 4.0]], dtype=torch.float64))
    layer.unmerge()
    assert torch.equal(base.weight, torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]], dtype=torch.float64))


def test_merge_preserves_output():
    layer = make_layer()
    perturb_b(layer)
    x = torch.randn(5, D_IN, dtype=torch.float64)
    before = layer(x)
    assert not torch.allclose(before, layer.base(x))  # the adapter really contributes
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), before, rtol=0, atol=1e-12)


def test_merge_preserves_output_float32():
    layer = make_layer(dtype=torch.float32)
    perturb_b(layer)
    x = torch.randn(5, D_IN)
    before = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-5)


def test_unmerge_restores_original_weight():
    layer = make_layer()
    perturb_b(layer)
    original = layer.base.weight.detach().clone()
    layer.merge()
    assert not torch.allclose(layer.base.weight, original)
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.base.weight, original, rtol=0, atol=1e-14)


def test_merge_twice_warns_and_changes_nothing():
    layer = make_layer()
    perturb_b(layer)
    layer.merge()
    merged = layer.base.weight.detach().clone()
    with pytest.warns(UserWarning, match="already merged"):
        layer.merge()
    assert torch.equal(layer.base.weight, merged)


def test_unmerge_without_merge_warns_and_changes_nothing():
    layer = make_layer()
    perturb_b(layer)
    original = layer.base.weight.detach().clone()
    with pytest.warns(UserWarning, match="not merged"):
        layer.unmerge()
    assert torch.equal(layer.base.weight, original)


def test_non_finite_merge_raises_and_leaves_weight_unchanged():
    layer = make_layer(dtype=torch.float32)
    with torch.no_grad():
        layer.lora_B.fill_(1e30)
        layer.lora_A.fill_(1e30)
    original = layer.base.weight.detach().clone()
    with pytest.raises(ValueError, match="non-finite"):
        layer.merge()
    assert torch.equal(layer.base.weight, original) and not layer.merged


def test_train_and_eval_never_merge():
    layer = make_layer()
    perturb_b(layer)
    original = layer.base.weight.detach().clone()
    layer.eval()
    layer.train()
    layer.eval()
    assert not layer.merged and torch.equal(layer.base.weight, original)


def test_dropout_only_in_training_mode():
    layer = make_layer(dropout=0.5)
    perturb_b(layer)
    x = torch.randn(64, D_IN, dtype=torch.float64)
    layer.eval()
    expected = layer.base(x) + layer.scaling * x @ layer.lora_A.T @ layer.lora_B.T
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)
    layer.train()
    out = layer(x)
    assert not torch.allclose(out, expected)
    # dropout acts on the low-rank path's input only: with B = 0 the base output comes through exactly
    with torch.no_grad():
        layer.lora_B.zero_()
    assert torch.equal(layer(x), layer.base(x))


def test_zero_dropout_is_identity_module():
    assert isinstance(make_layer(dropout=0.0).dropout, nn.Identity)
    assert isinstance(make_layer(dropout=0.1).dropout, nn.Dropout)


def test_disabled_flag_gives_base_output():
    layer = make_layer()
    perturb_b(layer)
    x = torch.randn(4, D_IN, dtype=torch.float64)
    layer.disabled = True
    assert torch.equal(layer(x), layer.base(x))


def test_lora_parameters_follow_base_device_and_dtype():
    layer = make_layer(dtype=torch.float64)
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float64
    assert layer.lora_A.device == layer.base.weight.device


def test_to_plain_holds_merged_weight_and_leaves_layer_unchanged():
    layer = make_layer()
    perturb_b(layer)
    original = layer.base.weight.detach().clone()
    x = torch.randn(3, D_IN, dtype=torch.float64)
    linear = layer.to_plain()
    assert type(linear) is nn.Linear
    torch.testing.assert_close(linear(x), layer(x), rtol=0, atol=1e-12)
    assert torch.equal(layer.base.weight, original) and not layer.merged


def test_to_plain_keeps_the_base_weights_memory_layout():
    base = nn.Linear(D_IN, D_OUT, dtype=torch.float64)
    base.weight = nn.Parameter(base.weight.detach().t().contiguous().t())  # stored (d_in, d_out), as GPT-2's Conv1D
    layer = LoRALinear(base, RANK, ALPHA)
    perturb_b(layer)
    linear = layer.to_plain()
    assert linear.weight.stride() == base.weight.stride() == (1, D_OUT)
    torch.testing.assert_close(linear.weight, base.weight + layer.delta_weight(), rtol=0, atol=1e-12)
    assert not linear.weight.requires_grad


def test_quantized_base_by_duck_typing():
    dense = nn.Linear(D_IN, D_OUT)
    base = FakeQuantLinear(dense.weight.detach(), dense.bias.detach())
    layer = LoRALinear(base, RANK, ALPHA)
    assert layer.lora_A.dtype == torch.float32  # adapters in float beside integer storage
    perturb_b(layer)
    x = torch.randn(3, D_IN)
    expected = base(x) + layer.scaling * x @ layer.lora_A.T @ layer.lora_B.T
    torch.testing.assert_close(layer(x), expected)
    # merge_and_unload's building block: dequant(W) + ΔW in a float nn.Linear
    linear = layer.to_plain()
    torch.testing.assert_close(linear.weight, base.dequantize_weight() + layer.delta_weight().detach())
    torch.testing.assert_close(linear(x), layer(x), rtol=1e-5, atol=1e-5)


def test_quantized_base_merge_raises_pointing_to_merge_and_unload():
    dense = nn.Linear(D_IN, D_OUT)
    layer = LoRALinear(FakeQuantLinear(dense.weight.detach(), dense.bias.detach()), RANK, ALPHA)
    with pytest.raises(ValueError, match="merge_and_unload"):
        layer.merge()
    assert not layer.merged


def test_low_rank_path_runs_in_input_dtype():
    dense = nn.Linear(D_IN, D_OUT)
    layer = LoRALinear(FakeQuantLinear(dense.weight.detach(), dense.bias.detach()), RANK, ALPHA)
    perturb_b(layer)
    x = torch.randn(3, D_IN, dtype=torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert layer.lora_B.grad.dtype == torch.float32 and layer.lora_B.grad.abs().max() > 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(rank=0), "rank=0"),
    (dict(rank=-2), "rank=-2"),
    (dict(rank=2.5), "rank=2.5"),
    (dict(rank=True), "rank=True"),
    (dict(alpha=0), "alpha=0"),
    (dict(alpha=-1.0), "alpha=-1.0"),
    (dict(alpha=float("nan")), "alpha=nan"),
    (dict(dropout=1.0), "dropout=1.0"),
    (dict(dropout=-0.1), "dropout=-0.1"),
    (dict(use_rslora="yes"), "use_rslora='yes'"),
])
def test_bad_hyperparameters_raise(kwargs, match):
    args = dict(rank=RANK, alpha=ALPHA, dropout=0.0, use_rslora=False) | kwargs
    with pytest.raises(ValueError, match=match):
        LoRALinear(nn.Linear(D_IN, D_OUT), **args)


def test_non_linear_base_raises():
    with pytest.raises(ValueError, match="Conv1d"):
        LoRALinear(nn.Conv1d(4, 4, 3), RANK, ALPHA)
