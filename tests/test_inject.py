"""apply_lora and friends (lora/inject.py) on plain torch.nn models, plus one MiniGPT end to end."""

import pytest
import torch
import torch.nn as nn

from helpers import assert_unchanged, snapshot
from lora.config import LoraConfig
from lora.inject import apply_lora
from lora.layer import LoRALinear
from lora.merge import disable_lora, merge_and_unload, merge_lora, unmerge_lora
from lora.model_layers import lora_layers, mark_only_lora_trainable
from minigpt.model import GPT, GPTConfig

D, VOCAB = 8, 10


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.query = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))

    def forward(self, x):
        return x + self.value(x) * torch.sigmoid(self.query(x)) + self.ff(x)


class TinyNet(nn.Module):
    """Nothing GPT-like: an embedding, two blocks with differently named linears, a norm and a head."""

    def __init__(self, d=D):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        self.blocks = nn.ModuleList([Block(d) for _ in range(2)])
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, VOCAB, bias=False)

    def forward(self, idx):
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm(x))


def tiny_net():
    return TinyNet().double()


def perturb_b(model):
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B.normal_()


IDS = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])


def test_apply_lora_wraps_exactly_the_targets():
    model = apply_lora(tiny_net(), rank=2, alpha=4, targets=("query", "value"))
    names = [n for n, _ in lora_layers(model)]
    assert names == ["blocks.0.query", "blocks.0.value", "blocks.1.query", "blocks.1.value"]
    assert all(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith(("ff.0", "ff.2", "lm_head")))


def test_apply_lora_records_its_config():
    model = apply_lora(tiny_net(), rank=2, alpha=4, dropout=0.1, targets=["ff.0"], use_rslora=True)
    assert model.lora_configs == {"default": LoraConfig(r=2, lora_alpha=4, lora_dropout=0.1, target_modules=["ff.0"],
                                                        use_rslora=True)}


def test_only_lora_parameters_are_trainable():
    model = apply_lora(tiny_net(), rank=2, alpha=4, targets=("query",))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"blocks.{i}.query.adapters.default.lora_{m}" for i in range(2) for m in "AB"}
    total = sum(p.numel() for p in model.parameters())
    assert mark_only_lora_trainable(model) == (2 * 2 * (D + D), total)


def test_trainable_params_equal_r_times_din_plus_dout():
    model = apply_lora(tiny_net(), rank=3, alpha=6, targets=("ff.0", "ff.2"))
    trainable, _ = mark_only_lora_trainable(model)
    assert trainable == 2 * (3 * (D + 2 * D) + 3 * (2 * D + D))  # two blocks, two layers each


def test_lora_parameters_follow_base_device_and_dtype():
    model = apply_lora(tiny_net(), targets=("query",), rank=2)
    for _, layer in lora_layers(model):
        assert layer.lora_A.dtype == layer.lora_B.dtype == layer.base.weight.dtype == torch.float64
        assert layer.lora_A.device == layer.base.weight.device


def test_zero_init_is_identity():
    model = tiny_net()
    before = model(IDS)
    apply_lora(model, rank=2, alpha=4, targets="all-linear")
    assert torch.equal(model(IDS), before)


def test_frozen_params_get_no_grad_and_do_not_change_after_an_optimizer_step():
    model = apply_lora(tiny_net(), rank=2, alpha=4, targets=("query", "value"))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    # every parameter goes to the optimizer, with weight decay: only requires_grad keeps the frozen ones fixed
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    model(IDS).pow(2).mean().backward()
    opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert p.grad is None and torch.equal(p, frozen[n]), n
    assert all(torch.count_nonzero(layer.lora_B) > 0 for _, layer in lora_layers(model))


def test_all_linear_skips_output_head():
    model = apply_lora(tiny_net(), rank=2, alpha=4, targets="all-linear")
    names = {n for n, _ in lora_layers(model)}
    assert len(names) == 8 and "lm_head" not in names and type(model.lm_head) is nn.Linear


@pytest.mark.parametrize("second", [("query",), "all-linear", ("blocks.0.query",)])
def test_double_application_raises_and_leaves_model_unchanged(second):
    model = apply_lora(tiny_net(), rank=2, alpha=4, targets=("query",))
    before = snapshot(model)
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model, rank=2, alpha=4, targets=second)
    assert_unchanged(model, before)


def test_second_application_on_other_layers_extends_the_adapter():
    model = apply_lora(tiny_net(), rank=2, alpha=4, targets=("query",))
    apply_lora(model, rank=2, alpha=4, targets=("value",))
    assert len(list(lora_layers(model))) == 4 and model.lora_configs["default"].target_modules == ("query", "value")


def test_second_application_with_other_hyperparameters_raises():
    model = apply_lora(tiny_net(), rank=2, alpha=4, targets=("query",))
    before = snapshot(model)
    with pytest.raises(ValueError, match="already has LoRA with r=2; new layers must use the same value"):
        apply_lora(model, rank=4, alpha=4, targets=("value",))
    assert_unchanged(model, before)


def test_bad_targets_raise_listing_candidates():
    model = tiny_net()
    before = snapshot(model)
    with pytest.raises(ValueError, match="'c_attn' matches no module") as err:
        apply_lora(model, targets=("c_attn",))
    assert "blocks.0.query" in str(err.value) and "blocks.0.ff.0" in str(err.value)
    assert_unchanged(model, before)


def test_non_linear_target_raises():
    model = tiny_net()
    before = snapshot(model)
    with pytest.raises(ValueError, match="LayerNorm"):
        apply_lora(model, targets=("norm",))
    assert_unchanged(model, before)


@pytest.mark.parametrize("targets", [(), [], "", [""]])
def test_empty_targets_raise(targets):
    model = tiny_net()
    before = snapshot(model)
    with pytest.raises(ValueError, match="targets="):
        apply_lora(model, targets=targets)
    assert_unchanged(model, before)


@pytest.mark.parametrize("kwargs, match", [
    (dict(rank=0), "rank=0"),
    (dict(rank=1.5), "rank=1.5"),
    (dict(alpha=0), "alpha=0"),
    (dict(alpha=-2), "alpha=-2"),
    (dict(dropout=1.0), "dropout=1.0"),
    (dict(dropout=-0.5), "dropout=-0.5"),
    (dict(rank=9), "rank=9 exceeds min"),  # the 8 -> 8 query layers cannot hold a rank-9 update
])
def test_bad_hyperparameters_raise_and_leave_model_unchanged(kwargs, match):
    model = tiny_net()
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        apply_lora(model, **(dict(targets=("query",)) | kwargs))
    assert_unchanged(model, before)


def test_merge_lora_preserves_output_and_unmerge_lora_restores_weights():
    model = apply_lora(tiny_net(), rank=2, alpha=4, targets="all-linear")
    perturb_b(model)
    originals = {n: layer.base.weight.detach().clone() for n, layer in lora_layers(model)}
    before = model(IDS)
    merge_lora(model)
    assert all(layer.merged for _, layer in lora_layers(model))
    torch.testing.assert_close(model(IDS), before, rtol=0, atol=1e-10)
    unmerge_lora(model)
    for n, layer in lora_layers(model):
        torch.testing.assert_close(layer.base.weight, originals[n], rtol=0, atol=1e-12)


def overflow_last_adapter(model):
    """Make the last adapter's ΔW overflow float64, so merging fails after the other layers merged."""
    last = list(lora_layers(model))[-1][1]
    with torch.no_grad():
        last.lora_A.fill_(1e200)
        last.lora_B.fill_(1e200)
    return model


def test_merge_lora_is_all_or_nothing():
    model = apply_lora(tiny_net(), rank=2, alpha=4, targets="all-linear")
    perturb_b(model)
    overflow_last_adapter(model)
    before = snapshot(model)
    with pytest.raises(ValueError, match="non-finite"):
        merge_lora(model)
    assert not any(layer.merged for _, layer in lora_layers(model))
    state = model.state_dict()  # the layers merged before the failure were unmerged: W + ΔW - ΔW
    assert all(torch.allclose(state[k], v, rtol=0, atol=1e-12) for k, v in before[0].items())


def test_merge_and_unload_gives_same_output_and_original_keys():
    model = tiny_net()
    keys = list(model.state_dict())
    apply_lora(model, rank=2, alpha=4, targets=("query", "ff.2"))
    perturb_b(model)
    before = model(IDS)
    assert not torch.allclose(before, model.lm_head(model.norm(model.embed(IDS))))
    merge_and_unload(model)
    assert not list(lora_layers(model)) and not hasattr(model, "lora_configs")
    assert all(type(m) is not LoRALinear for m in model.modules())
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(IDS), before, rtol=0, atol=1e-10)


def test_merge_and_unload_loads_into_fresh_model():
    model = apply_lora(tiny_net(), rank=2, alpha=4, targets="all-linear")
    perturb_b(model)
    before = model(IDS)
    fresh = tiny_net()
    fresh.load_state_dict(merge_and_unload(model).state_dict())  # strict: same keys, same shapes
    torch.testing.assert_close(fresh(IDS), before, rtol=0, atol=1e-10)


def test_merge_and_unload_of_merged_layers_keeps_the_merge():
    model = apply_lora(tiny_net(), rank=2, alpha=4, targets=("value",))
    perturb_b(model)
    before = model(IDS)
    merge_lora(model)
    merge_and_unload(model)
    torch.testing.assert_close(model(IDS), before, rtol=0, atol=1e-10)


def test_merge_and_unload_is_all_or_nothing():
    model = overflow_last_adapter(apply_lora(tiny_net(), rank=2, alpha=4, targets="all-linear"))
    before = snapshot(model)
    with pytest.raises(ValueError, match="non-finite"):
        merge_and_unload(model)
    assert_unchanged(model, before)


def test_merge_and_unload_without_lora_raises():
    with pytest.raises(ValueError, match="no LoRA layers"):
        merge_and_unload(tiny_net())


def test_disable_lora_gives_base_output():
    model = tiny_net()
    base_out = model(IDS)
    apply_lora(model, rank=2, alpha=4, targets="all-linear")
    perturb_b(model)
    adapted = model(IDS)
    assert not torch.allclose(adapted, base_out)
    with disable_lora(model):
        assert torch.equal(model(IDS), base_out)
    assert torch.equal(model(IDS), adapted)


def test_disable_lora_restores_on_exception():
    model = apply_lora(tiny_net(), rank=2, alpha=4, targets=("query",))
    with pytest.raises(RuntimeError), disable_lora(model):
        raise RuntimeError("inside")
    assert not any(layer.disabled for _, layer in lora_layers(model))


def test_disable_lora_refuses_a_merged_model():
    model = apply_lora(tiny_net(), rank=2, alpha=4, targets=("query",))
    merge_lora(model)
    with pytest.raises(ValueError, match="unmerge_lora"):
        with disable_lora(model):
            pass


# one end-to-end check on MiniGPT: a real transformer, with tied embeddings and activation checkpointing

def minigpt():
    return GPT(GPTConfig.from_preset("test")).double()


GPT_IDS = torch.tensor([[1, 5, 9, 2, 7, 3], [4, 4, 8, 0, 6, 2]])


def test_minigpt_merge_and_unload_same_logits_and_keys():
    model = minigpt()
    keys = list(model.state_dict())
    base_logits, _ = model(GPT_IDS)
    apply_lora(model, rank=4, alpha=8, targets=("c_attn", "c_proj", "c_fc"))
    assert torch.equal(model(GPT_IDS)[0], base_logits)  # zero init
    perturb_b(model)
    adapted, _ = model(GPT_IDS)
    assert not torch.allclose(adapted, base_logits)
    merge_and_unload(model)
    assert list(model.state_dict()) == keys
    fresh = minigpt()
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(GPT_IDS)[0], adapted, rtol=0, atol=1e-10)


def test_gradient_checkpointing_gives_same_lora_grads():
    model = apply_lora(minigpt(), rank=4, alpha=8, targets=("c_attn", "c_fc"))
    perturb_b(model)
    targets = torch.roll(GPT_IDS, -1, dims=1)

    def lora_grads(checkpointing):
        model.zero_grad(set_to_none=True)
        model.set_gradient_checkpointing(checkpointing)
        model(GPT_IDS, targets)[1].backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain, checkpointed = lora_grads(False), lora_grads(True)
    assert plain.keys() == checkpointed.keys() and len(plain) == 2 * 2 * 2
    assert all(plain[n].abs().max() > 0 for n in plain)
    for n in plain:
        torch.testing.assert_close(checkpointed[n], plain[n], rtol=0, atol=1e-12)


@pytest.mark.parametrize("layer", [nn.Linear(4, 4), nn.Embedding(5, 4)], ids=["Linear", "Embedding"])
def test_a_model_that_is_itself_a_layer_is_refused_not_made_its_own_child(layer):
    before = [n for n, _ in layer.named_modules()]
    with pytest.raises(ValueError, match=f"the model is itself a {type(layer).__name__} layer"):
        apply_lora(layer, rank=2, alpha=4, targets="all-linear" if isinstance(layer, nn.Linear) else ["x"])
    assert [n for n, _ in layer.named_modules()] == before == [""]


def test_a_failed_merge_restores_every_weight_bit_for_bit():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))
    apply_lora(model, rank=4, alpha=8, targets=["0", "1"])
    with torch.no_grad():
        model[0].lora_B.normal_(std=3.0)  # W + ΔW − ΔW is not W in float32 for such a ΔW
        model[1].lora_B.fill_(float("inf"))  # the second merge fails: its merged weight is not finite
    before = [m.base.weight.detach().clone() for m in model]
    with pytest.raises(ValueError):
        merge_lora(model)
    assert all(torch.equal(m.base.weight, b) for m, b in zip(model, before, strict=True))
    assert not any(m.merged for m in model)
    assert not torch.equal((before[0] + model[0].delta_weight()) - model[0].delta_weight(), before[0])  # not vacuous
