"""LinearNF4 and quantize_model (lora/quant/nf4_linear.py), and QLoRA: LoRALinear over a LinearNF4 base."""

import dataclasses

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lora.inject import apply_lora
from lora.io.safetensors_io import load_file, save_file
from lora.layer import LoRALinear
from lora.merge import merge_and_unload
from lora.params import count_parameters
from lora.quant.nf4 import dequantize_nf4, nbytes, quantize_nf4
from lora.quant.nf4_linear import LinearNF4, model_weight_bytes, quantize_model
from lora.quant.report import nf4_storage_bytes
from minigpt.model import GPT, GPTConfig

D_IN, D_OUT = 128, 48


def make_layer(bias=True, double_quant=True, **kw):
    linear = nn.Linear(D_IN, D_OUT, bias=bias)
    return linear, LinearNF4.from_linear(linear, double_quant=double_quant, **kw)


def tiny_gpt():
    return GPT(GPTConfig.from_preset("test")).eval()


# --- the layer ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("double_quant", [True, False])
def test_output_equals_linear_on_dequantized_weight(bias, double_quant):
    linear, layer = make_layer(bias, double_quant)
    x = torch.randn(3, 5, D_IN)
    w = dequantize_nf4(quantize_nf4(linear.weight, double_quant=double_quant))
    assert torch.equal(layer(x), F.linear(x, w, linear.bias))
    assert torch.equal(layer.dequantize_weight(), w) and w.shape == (D_OUT, D_IN)
    assert not torch.equal(w, linear.weight)  # the weight really was quantised


def test_forced_compute_dtype_runs_in_bf16_and_returns_input_dtype():
    linear, layer = make_layer(compute_dtype=torch.bfloat16)
    x = torch.randn(4, D_IN)
    expected = F.linear(x.bfloat16(), layer.dequantize_weight(torch.bfloat16), linear.bias.bfloat16()).float()
    out = layer(x)
    assert out.dtype == torch.float32 and torch.equal(out, expected)


def test_autocast_dequantises_to_the_autocast_dtype():
    _, layer = make_layer()
    x = torch.randn(4, D_IN)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        expected = F.linear(x, layer.dequantize_weight(torch.bfloat16), layer.bias)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)


def test_no_float_weight_is_kept_and_nothing_requires_grad():
    linear, layer = make_layer()
    assert [name for name, _ in layer.named_parameters()] == ["bias"]
    assert all(not p.requires_grad for p in layer.parameters())
    buffers = dict(layer.named_buffers())
    assert set(buffers) == {"weight_packed", "weight_absmax_q", "weight_absmax_scale", "weight_absmax_mean",
                            "weight_blocksizes"}
    # the NF4 tensors, and 16 bytes of blocksizes (int64 blocksize and double-quantisation blocksize)
    assert sum(b.numel() * b.element_size() for b in buffers.values()) == nbytes(layer.weight_q) + 16
    assert layer.num_quantized_parameters() == D_OUT * D_IN
    assert count_parameters(layer) == (0, D_OUT * D_IN + D_OUT)  # logical count, packing does not halve it


def test_input_gradient_equals_linear_on_dequantized_weight():
    linear, layer = make_layer()
    x = torch.randn(3, 5, D_IN, requires_grad=True)
    grad_out = torch.randn(3, 5, D_OUT)
    layer(x).backward(grad_out)
    x_ref = x.detach().clone().requires_grad_(True)
    F.linear(x_ref, layer.dequantize_weight(), linear.bias).backward(grad_out)
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_backward_keeps_no_dequantised_weight():
    _, layer = make_layer()
    saved_sizes = []

    def pack(t):
        saved_sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(torch.randn(4, D_IN, requires_grad=True))
    # a saved float copy of W (or of Wᵀ) would stay alive until backward and undo QLoRA's memory saving
    assert D_OUT * D_IN not in saved_sizes


def test_state_dict_roundtrip_restores_outputs(tmp_path):
    _, layer = make_layer()
    path = tmp_path / "nf4.safetensors"
    save_file(layer.state_dict(), path)
    _, fresh = make_layer()  # another random weight of the same shape
    x = torch.randn(2, D_IN)
    assert not torch.equal(fresh(x), layer(x))
    tensors, _ = load_file(path)
    fresh.load_state_dict(tensors)
    assert torch.equal(fresh(x), layer(x))


def test_half_casts_bias_but_keeps_quantised_state():
    _, layer = make_layer()
    w = layer.dequantize_weight()
    dtypes = {k: b.dtype for k, b in layer.named_buffers()}
    layer.half()
    assert {k: b.dtype for k, b in layer.named_buffers()} == dtypes  # float32 scales not rounded to fp16
    assert torch.equal(layer.dequantize_weight(), w) and layer.bias.dtype == torch.float16
    assert layer(torch.randn(2, D_IN, dtype=torch.float16)).dtype == torch.float16


def test_bad_construction_raises():
    with pytest.raises(ValueError, match="nn.Linear"):
        LinearNF4.from_linear(nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match="2-D"):
        LinearNF4(quantize_nf4(torch.randn(64)))
    with pytest.raises(ValueError, match="bias shape"):
        LinearNF4(quantize_nf4(torch.randn(4, 64)), bias=torch.zeros(5))


# --- quantize_model -----------------------------------------------------------------------------

def test_quantize_model_swaps_linears_and_reports_bytes():
    model = tiny_gpt()
    linears = {n: m.weight.numel() for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"}
    idx = torch.randint(0, 64, (2, 16))
    logits_before, _ = model(idx)
    before, after = quantize_model(model)
    assert before == model_weight_bytes(tiny_gpt())
    # each weight's float32 bytes are replaced by what quantize_nf4 stores for it, plus its two int64 blocksizes
    assert after == before - sum(4 * n - 16 for n in linears.values()) + sum(nf4_storage_bytes(n, 64, True) for n in linears.values())
    assert all(isinstance(model.get_submodule(n), LinearNF4) for n in linears)
    assert isinstance(model.lm_head, nn.Linear) and model.lm_head.weight is model.transformer.wte.weight
    logits_after, _ = model(idx)
    assert 0 < (logits_after - logits_before).abs().max() < 0.1 * logits_before.abs().max()
    assert quantize_model(model) == (after, after)  # a second call changes nothing


def test_quantize_model_targets_by_suffix():
    model = tiny_gpt()
    quantize_model(model, targets=["c_attn"], double_quant=False)
    kinds = {n: type(m).__name__ for n, m in model.named_modules() if n.endswith(("c_attn", "c_fc"))}
    assert kinds == {"transformer.h.0.attn.c_attn": "LinearNF4", "transformer.h.1.attn.c_attn": "LinearNF4",
                     "transformer.h.0.mlp.c_fc": "Linear", "transformer.h.1.mlp.c_fc": "Linear"}


def test_quantize_model_refuses_tied_head_and_lora_models():
    with pytest.raises(ValueError, match="tied"):
        quantize_model(tiny_gpt(), targets=["lm_head"])
    model = apply_lora(tiny_gpt(), rank=2, alpha=4)
    with pytest.raises(ValueError, match="LoRA"):
        quantize_model(model)
    with pytest.raises(ValueError, match="nope"):
        quantize_model(tiny_gpt(), targets=["nope"])


# --- QLoRA: LoRALinear over LinearNF4 ------------------------------------------------------------

def test_qlora_with_B_zero_equals_the_nf4_layer():
    _, base = make_layer()
    qlora = LoRALinear(base, rank=4, alpha=8)
    x = torch.randn(3, D_IN)
    assert torch.equal(qlora(x), base(x))


def test_qlora_gradients_reach_only_A_and_B():
    _, base = make_layer()
    qlora = LoRALinear(base, rank=4, alpha=8)
    with torch.no_grad():
        qlora.lora_B.normal_()  # with B = 0, A's gradient would be zero
    x = torch.randn(3, D_IN, requires_grad=True)
    qlora(x).pow(2).sum().backward()
    trainable = {n for n, p in qlora.named_parameters() if p.requires_grad}
    assert trainable == {"adapters.default.lora_A", "adapters.default.lora_B"}
    assert qlora.lora_A.grad.abs().max() > 0 and qlora.lora_B.grad.abs().max() > 0
    assert base.bias.grad is None and x.grad.abs().max() > 0  # the gradient flows through dequant(W) to x


def test_qlora_merge_and_unload_gives_dequantized_plus_delta():
    model = tiny_gpt()
    quantize_model(model, targets=["c_attn"])
    apply_lora(model, rank=2, alpha=4, targets=["c_attn"])
    layer = model.transformer.h[0].attn.c_attn
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = layer.base.dequantize_weight() + layer.delta_weight()
    idx = torch.randint(0, 64, (2, 16))
    logits, _ = model(idx)
    merge_and_unload(model)
    merged = model.transformer.h[0].attn.c_attn
    assert type(merged) is nn.Linear and torch.equal(merged.weight, expected)
    assert torch.allclose(model(idx)[0], logits, atol=1e-5)


# --- hostile values and all-or-nothing -------------------------------------------------------------

@pytest.mark.parametrize("field, value", [("absmax", float("nan")), ("absmax", float("inf")), ("absmax", -1.0),
                                          ("absmax_scale", float("inf")), ("absmax_mean", float("nan"))])
def test_non_finite_or_negative_scale_is_refused_at_load(tmp_path, field, value):
    _, layer = make_layer(double_quant=field != "absmax")
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    state[f"weight_{field}"].view(-1)[0] = value
    _, fresh = make_layer(double_quant=field != "absmax")
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match=f"{field} holds"):
        fresh.load_state_dict(state)
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())
    with pytest.raises(ValueError, match=f"{field} holds"):  # and an NF4Weight holding it cannot build a layer
        LinearNF4(dataclasses.replace(layer.weight_q, **{field: state[f"weight_{field}"]}))


def test_quantize_model_is_all_or_nothing_and_names_the_layer():
    model = tiny_gpt()
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight[2, 3] = float("inf")  # a late layer: earlier ones quantise fine
    state = {k: v.clone() for k, v in model.state_dict().items()}
    kinds = {n: type(m) for n, m in model.named_modules()}
    with pytest.raises(ValueError, match=r"cannot quantise 'transformer.h.1.mlp.c_fc': .*non-finite"):
        quantize_model(model)
    assert {n: type(m) for n, m in model.named_modules()} == kinds  # no layer swapped
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # bit-exact


@pytest.mark.parametrize("x_grad, bias_grad", [(True, True), (True, False), (False, True)])
def test_custom_backward_matches_linear_on_the_dequantised_weight(x_grad, bias_grad):
    """gradcheck in float64 for every input that needs a gradient, and equality with F.linear's gradients."""
    linear = nn.Linear(D_IN, 8, dtype=torch.float64)
    with torch.no_grad():
        linear.bias.normal_()
    layer = LinearNF4.from_linear(linear)
    layer.bias.requires_grad_(bias_grad)
    x = torch.randn(2, 3, D_IN, dtype=torch.float64, requires_grad=x_grad)  # leading dims: bias grad sums them
    inputs = tuple(t for t, needed in ((x, x_grad), (layer.bias, bias_grad)) if needed)
    assert torch.autograd.gradcheck(lambda *_: layer(x), inputs)
    w = layer.dequantize_weight().detach()
    b = layer.bias.detach().clone().requires_grad_(bias_grad)
    x2 = x.detach().clone().requires_grad_(x_grad)
    g = torch.randn(2, 3, 8, dtype=torch.float64)
    got = torch.autograd.grad(layer(x), inputs, g)
    want = torch.autograd.grad(F.linear(x2, w, b), tuple(t for t, n in ((x2, x_grad), (b, bias_grad)) if n), g)
    assert all(torch.allclose(a, e, rtol=0, atol=1e-12) for a, e in zip(got, want, strict=True))


def test_quantize_model_refuses_a_model_that_is_itself_a_linear_layer():
    layer = nn.Linear(64, 64)
    with pytest.raises(ValueError, match="the model is itself a Linear layer"):
        quantize_model(layer, "all-linear")
    assert [n for n, _ in layer.named_modules()] == [""]
