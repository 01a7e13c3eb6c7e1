"""Merging after QLoRA (lora/quant/requantize.py): the requantised merge NF4(dequant(W₄) + ΔW) and its error bound."""

import copy

import pytest
import torch
import torch.nn as nn

from helpers import assert_unchanged, snapshot, tiny_gpt
from lora.inject import apply_lora
from lora.layer import LoRALinear
from lora.merge import merge_and_unload
from lora.model_layers import lora_layers
from lora.quant.nf4 import dequantize_nf4, nbytes, nf4_codebook, quantize_nf4
from lora.quant.nf4_linear import LinearNF4, model_weight_bytes, quantize_model
from lora.quant.requantize import merge_and_requantize, nf4_half_gap, requantization_bound, requantized_layer


def trained_qlora(double_quant=True, targets="all-linear", seed=0):
    """A tiny QLoRA GPT whose B are nonzero (as after training), and a copy of its quantised base."""
    model = tiny_gpt(seed).eval()
    quantize_model(model, targets=targets, double_quant=double_quant)
    quantized = copy.deepcopy(model)
    apply_lora(model, rank=4, alpha=8, targets=targets)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B.copy_(0.05 * torch.randn(layer.lora_B.shape, generator=g))
    assert all(layer.lora_B.abs().max() > 0 for _, layer in lora_layers(model))
    return model, quantized


def idx_batch():
    return torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(3))


def test_half_gap_is_the_gap_between_minus_one_and_the_next_level():
    levels = nf4_codebook()
    assert nf4_half_gap() == pytest.approx((levels[1] - levels[0]).item() / 2)
    assert 0.15 < nf4_half_gap() < 0.153


@pytest.mark.parametrize("double_quant", [False, True])
def test_requantization_bound_holds_elementwise_and_is_nearly_reached(double_quant):
    w = torch.randn(96, 128, generator=torch.Generator().manual_seed(0))
    q = quantize_nf4(w, blocksize=64, double_quant=double_quant)
    err = (dequantize_nf4(q) - w).abs()
    bound = requantization_bound(w, q)
    assert bound.shape == w.shape and torch.all(err <= bound)
    assert (err / bound).max() > 0.9  # not vacuous: some weight sits almost on a midpoint of the widest gap


@pytest.mark.parametrize("double_quant", [False, True])
def test_requantized_merge_is_within_the_bound_of_dequant_plus_delta(double_quant):
    model, _ = trained_qlora(double_quant)
    for name, layer in lora_layers(model):
        merged = layer.base.dequantize_weight() + layer.delta_weight().detach()  # (d_out, d_in): merge (a)
        new = requantized_layer(layer)
        w_new = new.dequantize_weight()
        assert type(new) is LinearNF4 and new.blocksize == layer.base.blocksize
        assert new.weight_q.double_quant == double_quant
        assert torch.all((w_new - merged).abs() <= requantization_bound(merged, new.weight_q)), name
        assert not torch.equal(new.weight_packed, layer.base.weight_packed), name  # ΔW moved some codes


def test_requantized_layer_outputs_within_the_bound_of_the_qlora_layer():
    model, _ = trained_qlora()
    layer = model.transformer.h[0].attn.c_attn
    new = requantized_layer(layer)
    x = torch.randn(5, layer.in_features, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        diff = (new(x) - layer(x)).abs()  # (5, d_out): |x (W_new − M)ᵀ|
    merged = layer.base.dequantize_weight() + layer.delta_weight().detach()
    bound = x.abs() @ requantization_bound(merged, new.weight_q).double().T  # Σ_j |x_j| · bound_ij
    assert diff.max() > 0 and torch.all(diff <= bound + 1e-9)


def test_requantized_merge_keeps_the_4bit_storage_of_quantize_model():
    model, quantized = trained_qlora()
    merge_and_requantize(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert {n: type(m) for n, m in model.named_modules()} == {n: type(m) for n, m in quantized.named_modules()}
    assert model.state_dict().keys() == quantized.state_dict().keys()
    assert model_weight_bytes(model) == model_weight_bytes(quantized)
    for (name, m), old in zip(model.named_modules(), quantized.modules(), strict=True):
        if isinstance(m, LinearNF4):
            assert nbytes(m.weight_q) == nbytes(old.weight_q), name
    assert not hasattr(model, "lora_configs")


def test_plain_merge_equals_the_qlora_outputs_and_requantised_does_not():
    model, _ = trained_qlora()
    idx = idx_batch()
    with torch.no_grad():
        logits = model(idx)[0]
        plain = merge_and_unload(copy.deepcopy(model))(idx)[0]                 # (a) dequant(W₄) + ΔW
        requantised = merge_and_requantize(copy.deepcopy(model))(idx)[0]      # (c) NF4(dequant(W₄) + ΔW)
    err_a, err_c = (plain - logits).abs().max(), (requantised - logits).abs().max()
    assert err_a < 1e-5                      # float32 rounding only
    assert err_c > 100 * err_a               # the second NF4 rounding shows (bounded per layer, see above)


def test_layers_without_an_active_adapter_keep_their_codes_and_float_layers_merge_in_float():
    model = tiny_gpt().eval()
    quantize_model(model, targets=["c_attn"])
    apply_lora(model, rank=2, alpha=4, targets=["c_attn", "c_fc"])
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B.normal_()
    kept = model.transformer.h[1].attn.c_attn
    kept.set_active([])
    float_layer = model.transformer.h[0].mlp.c_fc
    expected = float_layer.base.weight + float_layer.delta_weight().detach()
    merge_and_requantize(model)
    assert model.transformer.h[1].attn.c_attn is kept.base  # ΔW = 0: the same codes, not rounded again
    assert type(model.transformer.h[0].mlp.c_fc) is nn.Linear
    assert torch.equal(model.transformer.h[0].mlp.c_fc.weight, expected)


def test_requantized_merge_is_all_or_nothing_and_names_the_layer():
    model, _ = trained_qlora()
    with torch.no_grad():
        model.transformer.h[1].mlp.c_proj.lora_B[0, 0] = float("inf")  # a late layer: earlier ones merge fine
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"cannot merge 'transformer.h.1.mlp.c_proj': .*non-finite.*unchanged"):
        merge_and_requantize(model)
    assert_unchanged(model, before)


def test_requantized_merge_refuses_a_model_without_lora_over_nf4():
    float_lora = apply_lora(tiny_gpt(), rank=2, alpha=4)
    with pytest.raises(ValueError, match="no LoRA layer over a LinearNF4.*merge_and_unload"):
        merge_and_requantize(float_lora)
    quantized = tiny_gpt()
    quantize_model(quantized)
    before = snapshot(quantized)
    with pytest.raises(ValueError, match="no LoRA layer over a LinearNF4"):
        merge_and_requantize(quantized)
    assert_unchanged(quantized, before)


@pytest.mark.parametrize("blocksize, double_quant", [(32, False), (128, True)])
def test_requantized_merge_keeps_the_base_blocksize_and_double_quantisation(blocksize, double_quant):
    # neither setting is the default pair (64, double quant on); NF4(dequant(W₄) + ΔW) must be
    # quantised exactly as the base was, code for code
    model = tiny_gpt(0).eval()
    quantize_model(model, targets="all-linear", blocksize=blocksize, double_quant=double_quant)
    apply_lora(model, rank=4, alpha=8, targets="all-linear")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B.copy_(0.05 * torch.randn(layer.lora_B.shape, generator=g))
    expected = {n: quantize_nf4(layer.to_plain().weight, blocksize=blocksize, double_quant=double_quant)
                for n, layer in lora_layers(model)}
    merge_and_requantize(model)
    for name, q in expected.items():
        got = model.get_submodule(name).weight_q
        assert (got.blocksize, got.double_quant) == (blocksize, double_quant), name
        assert torch.equal(got.packed, q.packed) and torch.equal(dequantize_nf4(got), dequantize_nf4(q)), name
