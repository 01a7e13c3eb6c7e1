"""Parameter counts and LoRA+ groups (lora/params.py); expected PEFT figures come from
tests/fixtures/peft_param_counts.json, written by PEFT itself (tests/fixtures/make_peft_fixture.py)."""

import json
import pathlib

import pytest
import torch
import torch.nn as nn

from lora.inject import apply_lora
from lora.model_layers import lora_layers
from lora.params import count_parameters, lora_plus_param_groups, trainable_summary
from minigpt.model import GPT, GPTConfig

PEFT_COUNTS = json.loads((pathlib.Path(__file__).parent / "fixtures" / "peft_param_counts.json").read_text())


def gpt2_small():
    """GPT-2 small's shapes on the meta device: parameters have sizes but no storage, so this is instant."""
    with torch.device("meta"):
        return GPT(GPTConfig.from_preset("gpt2"))


def test_gpt2_small_has_124_439_808_parameters():
    assert count_parameters(gpt2_small()) == (124_439_808, 124_439_808)  # the tied lm_head counted once


@pytest.mark.parametrize("case", PEFT_COUNTS["gpt2_small"], ids=lambda c: f"r{c['r']}-{c['target_modules']}")
def test_counts_match_peft_on_gpt2_small(case):
    model = apply_lora(gpt2_small(), rank=case["r"], alpha=2 * case["r"], targets=case["target_modules"])
    assert count_parameters(model) == (case["trainable"], case["total"])
    assert trainable_summary(model) == case["summary"]


def test_counts_match_peft_on_tiny_gpt2():
    tiny = PEFT_COUNTS["tiny"]
    model = GPT(GPTConfig(vocab_size=100, block_size=32, n_layer=2, n_head=2, n_embd=32))
    apply_lora(model, rank=tiny["r"], alpha=2 * tiny["r"], targets=("c_attn", "c_proj", "c_fc"))
    assert count_parameters(model) == (tiny["trainable"], tiny["total"])
    assert trainable_summary(model) == tiny["summary"]


def test_trainable_params_equal_r_times_din_plus_dout():
    model = apply_lora(gpt2_small(), rank=8, alpha=16, targets=("c_attn", "c_proj", "c_fc"))
    expected = sum(8 * (layer.in_features + layer.out_features) for _, layer in lora_layers(model))
    # by hand, per block: c_attn 768 -> 2304, attn.c_proj 768 -> 768, c_fc 768 -> 3072, mlp.c_proj 3072 -> 768
    assert expected == 12 * 8 * ((768 + 2304) + (768 + 768) + (768 + 3072) + (3072 + 768))
    assert count_parameters(model)[0] == expected


def test_shared_tensors_are_counted_once():
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    model[1].weight = model[0].weight
    assert count_parameters(model) == (16, 16)


class PackedLinear(nn.Module):
    """A quantized layer's shape: 4-bit codes packed two per byte, float scales and bias."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.in_features, self.out_features = d_in, d_out
        self.packed = nn.Parameter(torch.zeros(d_out * d_in // 2, dtype=torch.uint8), requires_grad=False)
        self.register_buffer("absmax", torch.ones(d_out * d_in // 64))
        self.bias = nn.Parameter(torch.zeros(d_out))

    def num_quantized_parameters(self):
        return self.in_features * self.out_features


def test_quantized_weight_counts_as_its_logical_size():
    model = nn.Sequential(PackedLinear(64, 32), nn.Linear(32, 2))
    assert count_parameters(model) == (32 + 66, 64 * 32 + 32 + 66)


def test_summary_uses_peft_wording():
    model = nn.Linear(3, 1)  # 4 parameters
    model.bias.requires_grad_(False)
    assert trainable_summary(model) == "trainable params: 3 || all params: 4 || trainable%: 75.0000"


def test_lora_plus_puts_B_at_ratio_times_lr():
    model = apply_lora(GPT(GPTConfig.from_preset("test")), rank=2, alpha=4, targets=("c_attn", "c_fc"))
    groups = lora_plus_param_groups(model, lr=1e-4, ratio=16, weight_decay=0.01)
    by_name = {g["name"]: g for g in groups}
    layers = [layer for _, layer in lora_layers(model)]
    assert {id(p) for p in by_name["lora_A"]["params"]} == {id(layer.lora_A) for layer in layers}
    assert {id(p) for p in by_name["lora_B"]["params"]} == {id(layer.lora_B) for layer in layers}
    assert by_name["lora_A"]["lr"] == 1e-4 and by_name["lora_B"]["lr"] == 16 * 1e-4
    assert all(g["weight_decay"] == 0.01 for g in groups)
    opt = torch.optim.AdamW(groups)
    assert [g["lr"] for g in opt.param_groups] == [1e-4, 16e-4]


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=0), "lr=0"), (dict(lr=-1e-3), "lr=-0.001"), (dict(ratio=0), "ratio=0"),
    (dict(weight_decay=-0.1), "weight_decay=-0.1"), (dict(lr=float("inf")), "lr=inf"),
])
def test_lora_plus_bad_numbers_raise(kwargs, match):
    model = apply_lora(GPT(GPTConfig.from_preset("test")), rank=2, alpha=4)
    with pytest.raises(ValueError, match=match):
        lora_plus_param_groups(model, **(dict(lr=1e-3) | kwargs))


def test_lora_plus_without_lora_raises():
    with pytest.raises(ValueError, match="no trainable LoRA"):
        lora_plus_param_groups(nn.Linear(2, 2), lr=1e-3)
