"""Layer-level properties of DoRA, PiSSA, Gaussian init, embedding LoRA and tied weights inside apply_lora."""

import pytest
import torch
import torch.nn as nn

from helpers import snapshot, tiny_gpt
from lora.dora import weight_norm
from lora.inject import apply_lora
from lora.layer import LoRALinear
from lora.merge import merge_and_unload, merge_lora, unmerge_lora
from lora.model_layers import lora_embeddings, lora_layers
from lora.params import count_parameters
from lora.quant.nf4_linear import LinearNF4
from lora.switching import set_adapter
from lora.tied import untie_weight


def ids():
    return torch.randint(0, 64, (2, 8))


def logits(model, x):
    with torch.no_grad():
        return model(x)[0]


def perturb(model):
    """Nonzero B (and moved m, A) everywhere, so a merge test cannot pass on a zero update."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(0.1 * torch.randn_like(p))


def assert_merges_keep_logits(model, atol=1e-5):
    """merge_lora, unmerge_lora and merge_and_unload each give the unmerged model's logits."""
    x = ids()
    unmerged = logits(model, x)
    merge_lora(model)
    torch.testing.assert_close(logits(model, x), unmerged, rtol=0, atol=atol)
    unmerge_lora(model)
    torch.testing.assert_close(logits(model, x), unmerged, rtol=0, atol=atol)
    torch.testing.assert_close(logits(merge_and_unload(model), x), unmerged, rtol=0, atol=atol)


def test_dora_at_init_equals_base_output_exactly():
    model = tiny_gpt().double().eval()
    x = ids()
    before = logits(model, x)
    apply_lora(model, rank=2, alpha=4, targets=("c_attn", "c_fc"), use_dora=True)
    layer = model.transformer.h[0].attn.c_attn
    torch.testing.assert_close(layer.adapters["default"].lora_magnitude_vector, weight_norm(layer.base.weight))
    torch.testing.assert_close(logits(model, x), before, rtol=0, atol=1e-12)


def test_dora_merged_and_unmerged_agree():
    model = apply_lora(tiny_gpt().eval(), rank=2, alpha=4, targets="all-linear", use_dora=True)
    perturb(model)
    assert_merges_keep_logits(model)


def test_dora_unmerge_restores_the_base_weight_itself():
    # logits cannot tell: DoRA's output g (W + ΔW) x with g = m / ‖W + ΔW‖ is the same for any positive
    # rescaling of a row of W + ΔW, so an unmerge leaving W' − ΔW (= g (W0 + ΔW) − ΔW) keeps every logit
    model = apply_lora(tiny_gpt().double().eval(), rank=2, alpha=4, targets="all-linear", use_dora=True)
    perturb(model)
    before = {n: layer.base.weight.detach().clone() for n, layer in lora_layers(model)}
    merge_lora(model)
    assert all((layer.base.weight - before[n]).abs().max() > 1e-3 for n, layer in lora_layers(model))  # W moved
    unmerge_lora(model)
    for n, layer in lora_layers(model):
        torch.testing.assert_close(layer.base.weight, before[n], rtol=0, atol=1e-12, msg=n)


def test_dora_norm_term_gets_no_gradient_and_magnitude_trains():
    """With the norm detached (§4.3) the gradient reaching A and B is only the one through the numerator."""
    layer = LoRALinear(nn.Linear(6, 5, dtype=torch.float64), rank=2, alpha=4, use_dora=True)
    adapter = layer.adapters["default"]
    with torch.no_grad():
        adapter.lora_B.normal_()
    x = torch.randn(3, 6, dtype=torch.float64)
    layer(x).sum().backward()
    got = adapter.lora_B.grad.clone()
    # the same output with g = m / ‖W + ΔW‖ held as a constant tensor: the gradient must be identical
    W, s, m = layer.base.weight, adapter.scaling, adapter.lora_magnitude_vector.detach()
    B = adapter.lora_B.detach().clone().requires_grad_(True)
    g = m / weight_norm(W + s * B.detach() @ adapter.lora_A.detach())
    ((x @ (W + s * B @ adapter.lora_A.detach()).T) * g + layer.base.bias).sum().backward()
    torch.testing.assert_close(got, B.grad)
    assert adapter.lora_magnitude_vector.grad is not None and adapter.lora_magnitude_vector.grad.abs().sum() > 0


def test_dora_over_nf4_base_starts_at_its_dequantized_norm():
    """QDoRA: m starts at the row norms of dequant(W4) and the output equals the NF4 base's."""
    base = LinearNF4.from_linear(nn.Linear(64, 32))
    x = torch.randn(4, 64)
    layer = LoRALinear(base, rank=2, alpha=4, use_dora=True)
    torch.testing.assert_close(layer.adapters["default"].lora_magnitude_vector, weight_norm(base.dequantize_weight()))
    torch.testing.assert_close(layer(x), base(x), rtol=0, atol=1e-5)


def test_dora_cannot_be_active_beside_another_adapter():
    model = apply_lora(tiny_gpt(), rank=2, alpha=4, use_dora=True)
    apply_lora(model, rank=2, alpha=4, adapter_name="plain")
    before = snapshot(model)
    with pytest.raises(ValueError, match="the DoRA adapter 'default'; a DoRA adapter can only be active alone"):
        set_adapter(model, ["default", "plain"])
    assert snapshot(model)[0].keys() == before[0].keys()
    set_adapter(model, "plain")


def test_dora_magnitude_counts_as_trainable_parameter():
    model = apply_lora(tiny_gpt(), rank=2, alpha=4, targets=("c_attn",), use_dora=True)
    plain = apply_lora(tiny_gpt(), rank=2, alpha=4, targets=("c_attn",))
    extra = sum(layer.out_features for _, layer in lora_layers(model))
    assert count_parameters(model)[0] == count_parameters(plain)[0] + extra


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4"])
def test_pissa_at_init_equals_base_output_to_float32_rounding(init):
    model = tiny_gpt().eval()
    x = ids()
    before = logits(model, x)
    apply_lora(model, rank=4, alpha=8, targets="all-linear", init=init)
    layer = model.transformer.h[0].attn.c_attn
    assert layer.lora_B.abs().sum() > 0  # not the default B = 0
    torch.testing.assert_close(logits(model, x), before, rtol=0, atol=1e-4)


def test_dora_with_pissa_starts_at_base_output():
    model = tiny_gpt().double().eval()
    x = ids()
    before = logits(model, x)
    apply_lora(model, rank=2, alpha=4, targets=("c_attn",), init="pissa", use_dora=True)
    torch.testing.assert_close(logits(model, x), before, rtol=0, atol=1e-10)


def test_gaussian_init_gives_std_one_over_rank_and_zero_b():
    model = apply_lora(tiny_gpt(n_embd=64), rank=4, alpha=8, targets=("c_fc",), init="gaussian")
    A = torch.cat([layer.lora_A.flatten() for _, layer in lora_layers(model)])
    assert abs(A.std().item() - 1 / 4) < 0.02
    assert all(layer.lora_B.abs().sum() == 0 for _, layer in lora_layers(model))


def test_pissa_failure_leaves_model_unchanged():
    model = tiny_gpt()
    before = snapshot(model)
    with pytest.raises(ValueError, match="shared with another module"):
        apply_lora(model, rank=2, alpha=4, targets=("c_attn", "lm_head"), init="pissa")
    assert all(torch.equal(v, before[0][k]) for k, v in model.state_dict().items())


def test_embedding_lora_merge_preserves_lookup():
    model = tiny_gpt().eval()
    untie_weight(model, "transformer.wte")  # GPT ties wte to lm_head; the tied case is the test below
    apply_lora(model, rank=2, alpha=4, targets=("wte", "c_attn"))
    assert [n for n, _ in lora_embeddings(model)] == ["transformer.wte"]
    perturb(model)
    assert_merges_keep_logits(model)
    assert isinstance(model.transformer.wte, nn.Embedding)


@pytest.mark.parametrize("target", ["lm_head", "wte"])
def test_merging_a_lora_on_a_tied_head_keeps_the_logits(target):
    """A merge into a weight shared by lm_head and wte is refused (nothing changes); after untie it keeps the logits."""
    model = apply_lora(tiny_gpt().eval(), rank=2, alpha=4, targets=(target,))
    perturb(model)
    x = ids()
    unmerged = logits(model, x)
    before = snapshot(model)
    for merge in (merge_lora, merge_and_unload):
        with pytest.raises(ValueError, match="shared with .*untie_weight"):
            merge(model)
        assert all(torch.equal(v, before[0][k]) for k, v in model.state_dict().items())
    name = "lm_head" if target == "lm_head" else "transformer.wte"
    with pytest.raises(ValueError, match="shared with"):
        model.get_submodule(name).merge()
    untie_weight(model, f"{name}.base")
    merge_lora(model)
    torch.testing.assert_close(logits(model, x), unmerged, rtol=0, atol=1e-5)
    unmerge_lora(model)
    torch.testing.assert_close(logits(merge_and_unload(model), x), unmerged, rtol=0, atol=1e-5)
