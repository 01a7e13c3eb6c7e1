"""add_weighted_adapter (lora/combine.py): cat, linear and svd against their formulas and against PEFT.

PEFT's own results are in tests/fixtures/peft_gpt2_tiny/ (multi/, expected_multi.safetensors),
written by tests/fixtures/make_peft_multi_fixture.py.
"""

import pathlib

import pytest
import torch
import torch.nn as nn

from helpers import assert_unchanged, snapshot
from lora import (
    add_weighted_adapter,
    apply_lora,
    list_adapters,
    load_adapter,
    lora_layers,
    merge_lora,
    save_adapter,
    set_adapter,
)
from lora.io.safetensors_io import load_file
from minigpt.pretrained import load_pretrained

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "peft_gpt2_tiny"
COMBINATIONS = {  # as make_peft_multi_fixture.py made them in PEFT
    "cat_mix": dict(adapters=["default", "other"], weights=[1.0, -0.5], combination_type="cat"),
    "linear_mix": dict(adapters=["default", "third"], weights=[0.7, -0.3], combination_type="linear"),
    "svd_mix": dict(adapters=["default", "other"], weights=[1.0, -0.5], combination_type="svd", svd_rank=3),
    "negated": dict(adapters=["default"], weights=[-1.0], combination_type="cat"),
}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(12, 10), nn.Linear(10, 9)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


X = torch.randn(5, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def adapters(rank_second=3, targets_second=("a", "b")):
    """"p" (r=2, α=4, on a, b) and "q" (r=rank_second, α=5, rsLoRA), both with B ≠ 0, in float64."""
    model = apply_lora(Net().double(), rank=2, alpha=4, targets=("a", "b"), adapter_name="p")
    apply_lora(model, rank=rank_second, alpha=5, targets=targets_second, use_rslora=True, adapter_name="q")
    with torch.no_grad():
        for _, layer in lora_layers(model):
            for adapter in layer.adapters.values():
                adapter.lora_B.normal_()
    return model.eval()


def delta(layer, name):
    return layer.adapters[name].delta_weight().detach()


def test_cat_equals_the_weighted_sum_of_delta_weights():
    model = add_weighted_adapter(adapters(), ["p", "q"], [0.7, -1.3], "mix", combination_type="cat")
    for _, layer in lora_layers(model):
        assert layer.adapters["mix"].rank == 5 and layer.adapters["mix"].scaling == 1.0
        expected = 0.7 * delta(layer, "p") - 1.3 * delta(layer, "q")
        torch.testing.assert_close(delta(layer, "mix"), expected, rtol=0, atol=1e-12)


def test_weight_minus_one_cancels_the_adapter():
    model = adapters()
    base = Net().double()
    base.load_state_dict({k.replace(".base", ""): v for k, v in model.state_dict().items() if "adapters" not in k})
    set_adapter(model, "p")
    assert (model(X) - base(X)).abs().max() > 0.1  # the adapter matters
    add_weighted_adapter(model, ["p"], [-1.0], "minus_p", combination_type="cat")
    set_adapter(model, ["p", "minus_p"])
    torch.testing.assert_close(model(X), base(X), rtol=0, atol=1e-12)
    for _, layer in lora_layers(model):  # ΔW_{-p} = -ΔW_p up to float64 rounding (√(w s) factors)
        torch.testing.assert_close(delta(layer, "minus_p"), -delta(layer, "p"), rtol=0, atol=1e-14)


def test_linear_matches_the_A_B_averaging_formula_and_its_cross_terms():
    model = add_weighted_adapter(adapters(rank_second=2), ["p", "q"], [0.6, -0.8], "lin", combination_type="linear")
    for _, layer in lora_layers(model):
        p, q = layer.adapters["p"], layer.adapters["q"]
        cp, cq = (0.6 * p.scaling) ** 0.5, (0.8 * q.scaling) ** 0.5  # √|w s|; q's weight is negative
        A, B = cp * p.lora_A - cq * q.lora_A, cp * p.lora_B + cq * q.lora_B
        torch.testing.assert_close(layer.adapters["lin"].lora_A, A, rtol=0, atol=1e-12)
        torch.testing.assert_close(layer.adapters["lin"].lora_B, B, rtol=0, atol=1e-12)
        weighted_sum = 0.6 * delta(layer, "p") - 0.8 * delta(layer, "q")
        cross = -cp * cq * p.lora_B @ q.lora_A + cq * cp * q.lora_B @ p.lora_A
        torch.testing.assert_close(delta(layer, "lin") - weighted_sum, cross.detach(), rtol=0, atol=1e-12)
        assert cross.abs().max() > 0.1  # linear is not Σ w ΔW here


def test_svd_equals_the_truncated_svd_of_the_weighted_sum():
    model = add_weighted_adapter(adapters(), ["p", "q"], [1.0, -0.5], "svd2", svd_rank=2)
    for _, layer in lora_layers(model):
        target = delta(layer, "p") - 0.5 * delta(layer, "q")
        U, S, Vh = torch.linalg.svd(target)
        torch.testing.assert_close(delta(layer, "svd2"), U[:, :2] @ torch.diag(S[:2]) @ Vh[:2], rtol=0, atol=1e-12)
        error = torch.linalg.matrix_norm(delta(layer, "svd2") - target)
        torch.testing.assert_close(error, S[2:].pow(2).sum().sqrt(), rtol=1e-10, atol=0)  # Eckart–Young
        assert error > 1e-3  # rank 2 < rank of the sum (up to 5): the test compares real errors


def test_no_other_rank_r_matrix_tried_is_closer_than_svd():
    model = adapters()
    add_weighted_adapter(model, ["p", "q"], [1.0, -0.5], "svd2", svd_rank=2)
    g = torch.Generator().manual_seed(3)
    for _, layer in lora_layers(model):
        target = delta(layer, "p") - 0.5 * delta(layer, "q")
        best = torch.linalg.matrix_norm(delta(layer, "svd2") - target)
        svd2 = layer.adapters["svd2"]
        tries = [delta(layer, "p")]  # adapter p alone has rank 2
        for _ in range(200):  # random rank-2 matrices, and the svd factors B, A nudged (still rank 2)
            B, A = (torch.randn(layer.out_features, 2, generator=g, dtype=torch.float64),
                    torch.randn(2, layer.in_features, generator=g, dtype=torch.float64))
            tries += [B @ A, (svd2.lora_B + 1e-3 * B) @ (svd2.lora_A + 1e-3 * A)]
        assert all(torch.linalg.matrix_rank(t) <= 2 for t in tries)
        assert all(torch.linalg.matrix_norm(t - target) >= best for t in tries)


def test_different_targets_combine_over_the_union_of_layers():
    model = adapters(targets_second=("b",))
    assert list(model.a.adapters) == ["p"]
    add_weighted_adapter(model, ["p", "q"], [2.0, 1.0], "mix", combination_type="cat")
    assert list_adapters(model)["mix"]["target_modules"] == ("a", "b")
    torch.testing.assert_close(delta(model.a, "mix"), 2.0 * delta(model.a, "p"), rtol=0, atol=1e-12)  # q adds zero
    torch.testing.assert_close(delta(model.b, "mix"), 2.0 * delta(model.b, "p") + delta(model.b, "q"), rtol=0, atol=1e-12)


def test_combined_adapter_is_inactive_and_saves_loads_and_merges(tmp_path):
    model = add_weighted_adapter(adapters(), ["p", "q"], [1.0, -0.5], "mix", combination_type="cat")
    assert not list_adapters(model)["mix"]["active"]
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".mix." in n)
    set_adapter(model, "mix")
    expected = model(X)
    save_adapter(model, tmp_path / "ad")
    fresh = Net().double()
    fresh.load_state_dict({k.replace(".base", ""): v for k, v in model.state_dict().items() if "adapters" not in k})
    load_adapter(fresh, tmp_path / "ad" / "mix", adapter_name="mix")
    assert torch.equal(fresh(X), expected)
    merge_lora(model)
    torch.testing.assert_close(model(X), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(adapters=["p", "nope"]), r"unknown adapter 'nope'; the model has \['p', 'q'\]"),
    (dict(adapters=[]), "adapters=\\[\\]"),
    (dict(weights=[1.0]), r"weights=\[1.0\]: give a list of 2 numbers"),
    (dict(weights=[1.0, float("nan")]), "nan is not a finite number"),
    (dict(weights=[1.0, float("-inf")]), "-inf is not a finite number"),
    (dict(weights=[1.0, True]), "True is not a finite number"),
    (dict(combination_type="linear"), "needs adapters of one rank"),
    (dict(combination_type="ties"), "combination_type='ties'"),
    (dict(svd_rank=0), "svd_rank=0"),
    (dict(svd_rank=2.0), "svd_rank=2.0"),
    (dict(svd_rank=10), "rank 10 exceeds min\\(d_in, d_out\\) = 9 of 'b'"),
    (dict(svd_rank=2, combination_type="cat"), "svd_rank=2 applies to"),
    (dict(adapter_name="q"), "adapter_name='q' exists already"),
    (dict(adapter_name="a.b"), "adapter_name='a.b'"),
])
def test_bad_input_raises_and_leaves_the_model_unchanged(kwargs, match):
    model = adapters()
    before = snapshot(model)
    args = dict(adapters=["p", "q"], weights=[1.0, -1.0], adapter_name="mix", combination_type="svd") | kwargs
    with pytest.raises(ValueError, match=match):
        add_weighted_adapter(model, **args)
    assert_unchanged(model, before)


# --- PEFT parity ---

def peft_model():
    return load_adapter(load_pretrained(FIXTURE / "base").eval(), FIXTURE / "multi")


def test_peft_multi_adapter_directory_loads_and_gives_peft_logits():
    expected, _ = load_file(FIXTURE / "expected_multi.safetensors")
    model = peft_model()
    assert list(model.lora_configs) == ["default", "other", "third"]
    for names, key in [("default", "default"), ("other", "other"), ("third", "third"), (["default", "other"], "default+other")]:
        set_adapter(model, names)
        assert (model(expected["ids"])[0] - expected[f"logits_{key}"]).abs().max() < 1e-5, key


@pytest.mark.parametrize("name", list(COMBINATIONS))
def test_peft_add_weighted_adapter_results_are_reproduced(name):
    expected, _ = load_file(FIXTURE / "expected_multi.safetensors")
    model = add_weighted_adapter(peft_model(), adapter_name=name, **COMBINATIONS[name])
    set_adapter(model, name)
    logits, _ = model(expected["ids"])
    assert (logits - expected[f"logits_{name}"]).abs().max() < 1e-5
    assert (logits - expected["logits_default"]).abs().max() > 1e-2  # the combination is not just "default"


def test_svd_without_svd_rank_uses_the_largest_input_rank():
    # ranks 2, 5, 1 in that order: the first (2), the last (1), the smallest (1) and the sum (8) all
    # differ from the largest (5), PEFT's default
    model = adapters(rank_second=5)
    apply_lora(model, rank=1, alpha=3, targets=("a", "b"), adapter_name="t")
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.adapters["t"].lora_B.normal_()
    weights = [1.0, -0.5, 0.8]
    add_weighted_adapter(model, ["p", "q", "t"], weights, "mix", combination_type="svd")
    assert list_adapters(model)["mix"]["r"] == 5
    for _, layer in lora_layers(model):
        new = layer.adapters["mix"]
        assert new.lora_A.shape[0] == new.lora_B.shape[1] == 5
        delta = sum(w * layer.adapters[n].delta_weight() for n, w in zip(["p", "q", "t"], weights, strict=True))
        U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
        assert S[5] > 1e-6  # rank 8 in all: truncating to 5 drops something, so another rank would differ
        torch.testing.assert_close(new.delta_weight(), (U[:, :5] * S[:5]) @ Vh[:5], rtol=0, atol=1e-10)
