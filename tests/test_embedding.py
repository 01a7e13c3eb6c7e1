"""LoRA on nn.Embedding (lora/embedding.py): identity at init, gradients, merge, and PEFT's tensors."""

import pathlib

import pytest
import torch
import torch.nn as nn

from lora.embedding import LoRAEmbedding
from lora.io.safetensors_io import load_file

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
V, C, R = 20, 8, 3


def make(**kw):
    return LoRAEmbedding(nn.Embedding(V, C, dtype=torch.float64, **kw), rank=R, alpha=6)


def test_starts_at_base_output_exactly():
    layer = make()
    idx = torch.randint(0, V, (4, 7))
    assert torch.equal(layer(idx), layer.base(idx))
    assert layer.lora_embedding_A.shape == (R, V) and layer.lora_embedding_B.shape == (C, R)


def test_grad_A_nonzero_at_init_grad_B_zero():
    layer = make()
    layer(torch.tensor([[1, 5, 5]])).pow(2).sum().backward()
    assert layer.lora_embedding_A.grad[:, [1, 5]].abs().sum() > 0
    assert torch.equal(layer.lora_embedding_A.grad[:, 0], torch.zeros(R, dtype=torch.float64))  # not looked up
    assert torch.equal(layer.lora_embedding_B.grad, torch.zeros(C, R, dtype=torch.float64))
    assert layer.base.weight.grad is None


def test_merge_preserves_lookup():
    layer = make()
    with torch.no_grad():
        layer.lora_embedding_A.normal_()  # A = 0 would make the test pass for any merge
    idx = torch.randint(0, V, (4, 7))
    before = layer(idx)
    assert not torch.allclose(before, layer.base(idx))
    layer.merge()
    torch.testing.assert_close(layer(idx), before, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.to_plain()(idx), before, rtol=0, atol=1e-12)
    with pytest.warns(UserWarning, match="already merged"):
        layer.merge()
    layer.unmerge()
    torch.testing.assert_close(layer(idx), before, rtol=0, atol=1e-12)


def test_delta_weight_is_scaled_BA_transposed():
    layer = make()
    with torch.no_grad():
        layer.lora_embedding_A.normal_()
    expected = (6 / R) * (layer.lora_embedding_B @ layer.lora_embedding_A).T
    assert layer.delta_weight().shape == (V, C)
    torch.testing.assert_close(layer.delta_weight(), expected, rtol=0, atol=0)


def test_padding_row_of_A_gets_no_gradient():
    layer = make(padding_idx=0)
    with torch.no_grad():
        layer.lora_embedding_A.normal_()
    layer(torch.tensor([0, 0, 2])).sum().backward()
    assert torch.equal(layer.lora_embedding_A.grad[:, 0], torch.zeros(R, dtype=torch.float64))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="nn.Embedding"):
        LoRAEmbedding(nn.Linear(3, 3), 1, 1)
    with pytest.raises(ValueError, match="max_norm"):
        LoRAEmbedding(nn.Embedding(5, 4, max_norm=1.0), 1, 1)
    with pytest.raises(ValueError, match="rank=5 exceeds"):
        LoRAEmbedding(nn.Embedding(10, 4), 5, 1)


def test_peft_embedding_adapter_gives_peft_logits():
    """PEFT's LoRA on GPT-2's wte, its tensors in our layer on minigpt's GPT: PEFT's logits (the tied head stays E)."""
    from minigpt.pretrained import load_pretrained

    tensors, _ = load_file(FIXTURES / "peft_variants" / "embedding" / "adapter_model.safetensors")
    expected, _ = load_file(FIXTURES / "peft_variants" / "expected.safetensors")
    model = load_pretrained(FIXTURES / "peft_gpt2_tiny" / "base").eval()
    emb = LoRAEmbedding(model.transformer.wte, rank=2, alpha=4)
    prefix = "base_model.model.transformer.wte."
    with torch.no_grad():
        emb.lora_embedding_A.copy_(tensors[prefix + "lora_embedding_A"])
        emb.lora_embedding_B.copy_(tensors[prefix + "lora_embedding_B"])
        model.transformer.wte = emb
        logits = model(expected["ids"])[0]
    assert not torch.allclose(logits, expected["base_logits"], atol=1e-3)
    torch.testing.assert_close(logits, expected["embedding_logits"], rtol=0, atol=1e-5)


# --- several named adapters on one embedding, as on a linear layer ---

def test_an_embedding_holds_and_switches_two_named_adapters():
    from lora.config import LoraConfig

    layer = make()
    layer.add_adapter("other", LoraConfig(r=2, lora_alpha=2))
    with torch.no_grad():
        for adapter in layer.adapters.values():
            adapter.lora_embedding_A.normal_()
    idx = torch.randint(0, V, (4, 7))
    base = layer.base(idx)
    one = layer(idx)  # "default" only: "other" was added inactive
    layer.set_active(["other"])
    other = layer(idx)
    layer.set_active(["default", "other"])
    both = layer(idx)
    torch.testing.assert_close(both - base, (one - base) + (other - base), rtol=0, atol=1e-12)
    assert not torch.allclose(one, other)
    layer.delete_adapter("default")
    assert list(layer.adapters) == ["other"] and torch.equal(layer(idx), other)


def test_two_embedding_adapters_load_from_peft_and_give_its_logits(tmp_path):
    from lora.io.adapter_io import load_adapter, save_adapter
    from lora.switching import set_adapter
    from minigpt.pretrained import load_pretrained

    gpt2 = FIXTURES / "peft_gpt2_tiny"
    expected, _ = load_file(gpt2 / "expected_embedding_multi.safetensors")
    model = load_adapter(load_pretrained(gpt2 / "base").eval(), gpt2 / "embedding_multi")
    assert list(model.transformer.wte.adapters) == ["default", "other"]
    for name in ("default", "other"):
        set_adapter(model, name)
        torch.testing.assert_close(model(expected["ids"])[0], expected[f"logits_{name}"], rtol=0, atol=1e-5)
    save_adapter(model, tmp_path / "ad", adapter_name="other")  # one at a time into one folder
    save_adapter(model, tmp_path / "ad", adapter_name="default")
    again = load_adapter(load_pretrained(gpt2 / "base").eval(), tmp_path / "ad")
    for name in ("default", "other"):
        set_adapter(again, name)
        torch.testing.assert_close(again(expected["ids"])[0], expected[f"logits_{name}"], rtol=0, atol=1e-5)
