"""PiSSA's conversion to a plain LoRA (PEFT's path_initial_model_for_weight_conversion), as a formula.

A PiSSA adapter (A, B) trained from its initial (A₀, B₀) changed the original weight by
ΔW = s·(B A − B₀ A₀), since the residual base is W₀ − s·B₀A₀. That is one LoRA of rank 2r on W₀ itself:

    ΔW = s · [B | −B₀] · [A; A₀],   saved with r and α doubled (α·√2 with rsLoRA), so s stays the same.

PEFT wrote the three sets of tensors in tests/fixtures/peft_variants/ (make_peft_variants_fixture.py);
this test recomputes the conversion from the first two and compares it with PEFT's third.
"""

import json
from pathlib import Path

import torch

from lora import load_file, lora_scaling

VARIANTS = Path(__file__).resolve().parent / "fixtures" / "peft_variants"
PREFIX = "base_model.model."


def adapter(name):
    tensors, _ = load_file(VARIANTS / name / "adapter_model.safetensors")
    config = json.loads((VARIANTS / name / "adapter_config.json").read_text())
    return tensors, config


def test_pissa_as_lora_is_the_trained_minus_the_initial_adapter_at_twice_the_rank():
    trained, cfg = adapter("pissa")
    converted, cfg2 = adapter("pissa_as_lora")
    initial, _ = load_file(VARIANTS / "pissa_init.safetensors")
    assert (cfg2["r"], cfg2["lora_alpha"]) == (2 * cfg["r"], 2 * cfg["lora_alpha"]) and not cfg["use_rslora"]
    s = lora_scaling(cfg["r"], cfg["lora_alpha"])
    assert lora_scaling(cfg2["r"], cfg2["lora_alpha"]) == s  # doubling both keeps α/r
    layers = sorted(k[len(PREFIX):-len(".lora_A.weight")] for k in trained if k.endswith("lora_A.weight"))
    assert layers
    for layer in layers:
        A, B = (trained[f"{PREFIX}{layer}.lora_{x}.weight"].double() for x in "AB")
        A0, B0 = (initial[f"{layer}.lora_{x}"].double() for x in "AB")
        A2, B2 = (converted[f"{PREFIX}{layer}.lora_{x}.weight"].double() for x in "AB")
        assert torch.allclose(A2, torch.cat([A, A0]), atol=1e-6)        # [A; A₀]: (2r, d_in)
        assert torch.allclose(B2, torch.cat([B, -B0], dim=1), atol=1e-6)  # [B | −B₀]: (d_out, 2r)
        delta = s * (B @ A - B0 @ A0)
        assert delta.abs().max() > 0  # training moved the adapter: the difference is not trivially zero
        assert torch.allclose(s * B2 @ A2, delta, atol=1e-6)
