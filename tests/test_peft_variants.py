"""PEFT's DoRA, PiSSA, embedding and layer-pattern adapters load here with PEFT's logits, and ours load in PEFT.

The fixtures are PEFT's own saves on the tiny GPT-2 layout, written by
tests/fixtures/make_peft_variants_fixture.py (which also loads our saves of the same adapters in PEFT).
"""

import json
import pathlib

import pytest
import torch

from lora.io.adapter_io import load_adapter, save_adapter
from lora.io.safetensors_io import load_file
from lora.merge import merge_and_unload
from lora.model_layers import lora_embeddings, lora_layers
from lora.params import count_parameters
from minigpt.pretrained import load_pretrained

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
VARIANTS = FIXTURES / "peft_variants"
ADAPTERS = ["dora", "pissa", "pissa_as_lora", "embedding", "patterns", "layers", "regex"]
PEFT = json.loads((VARIANTS / "layers.json").read_text())


def base(residual=False):
    """The tiny GPT-2 base; with residual, PiSSA's residual weights (Conv1D (d_in, d_out) layout) in place."""
    model = load_pretrained(FIXTURES / "peft_gpt2_tiny" / "base").eval()
    if residual:
        tensors, _ = load_file(VARIANTS / "pissa_residual.safetensors")
        with torch.no_grad():
            for key, w in tensors.items():
                model.get_parameter(key).copy_(w.T)
    return model


def expected():
    return load_file(VARIANTS / "expected.safetensors")[0]


def logits_of(model, ids):
    with torch.no_grad():
        return model(ids)[0]


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_peft_variant_adapter_gives_peft_logits(adapter):
    exp = expected()
    model = load_adapter(base(residual=adapter == "pissa"), VARIANTS / adapter).eval()
    key = "pissa_logits" if adapter == "pissa_as_lora" else f"{adapter}_logits"
    assert not torch.allclose(logits_of(model, exp["ids"]), exp["base_logits"], atol=1e-3)
    torch.testing.assert_close(logits_of(model, exp["ids"]), exp[key], rtol=0, atol=1e-5)


@pytest.mark.parametrize("adapter", [a for a in ADAPTERS if a != "pissa_as_lora"])
def test_loaded_variants_have_peft_layers_and_parameter_counts(adapter):
    """Per-layer (r, α) and (trainable, total) as PEFT reports them; DoRA's m counts as trainable."""
    model = load_adapter(base(), VARIANTS / adapter)
    layers = {n: (layer.rank, layer.alpha) for n, layer in [*lora_layers(model), *lora_embeddings(model)]}
    assert layers == {n: (row["r"], row["lora_alpha"]) for n, row in PEFT[adapter]["layers"].items()}
    assert count_parameters(model) == (PEFT[adapter]["trainable"], PEFT[adapter]["total"])


@pytest.mark.parametrize("adapter", [a for a in ADAPTERS if a != "pissa_as_lora"])
def test_saved_variant_reloads_with_same_logits_and_config(adapter, tmp_path):
    """Ours written in PEFT's layout: the same config fields PEFT wrote, and loading it back gives the logits."""
    exp = expected()
    model = load_adapter(base(residual=adapter == "pissa"), VARIANTS / adapter).eval()
    save_adapter(model, tmp_path / "ours")
    ours = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    peft = json.loads((VARIANTS / adapter / "adapter_config.json").read_text())
    for field in ("r", "lora_alpha", "use_dora", "init_lora_weights", "exclude_modules", "layers_to_transform",
                  "layers_pattern", "target_modules"):
        assert ours[field] == peft[field] or sorted(ours[field]) == sorted(peft[field]), field
    reloaded = load_adapter(base(residual=adapter == "pissa"), tmp_path / "ours").eval()
    torch.testing.assert_close(logits_of(reloaded, exp["ids"]), exp[f"{adapter}_logits"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("adapter", ["dora", "patterns", "regex", "layers"])
def test_merge_and_unload_of_variant_keeps_logits(adapter):
    exp = expected()
    model = merge_and_unload(load_adapter(base(), VARIANTS / adapter).eval())
    torch.testing.assert_close(logits_of(model, exp["ids"]), exp[f"{adapter}_logits"], rtol=0, atol=1e-5)
