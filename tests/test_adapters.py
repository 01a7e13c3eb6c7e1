"""Several named adapters on one model (lora/switching.py, LoRALinear's adapter dict, multi-adapter files)."""

import copy
import dataclasses

import pytest
import torch
import torch.nn as nn

import lora.io.adapter_io
from helpers import assert_unchanged, snapshot
from lora import (
    LoRALinear,
    apply_lora,
    delete_adapter,
    disable_lora,
    list_adapters,
    load_adapter,
    lora_layers,
    merge_and_unload,
    merge_lora,
    save_adapter,
    set_adapter,
    unmerge_lora,
)
from lora.config import LoraConfig
from lora.io.adapter_layout import saved_adapters
from lora.io.safetensors_io import load_file, save_file, serialize


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 5)

    def forward(self, x):
        return self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))


X = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def perturb(model, name):
    """Nonzero B for adapter `name`: with B = 0 every identity below would hold trivially."""
    with torch.no_grad():
        for _, layer in lora_layers(model):
            if name in layer.adapters:
                layer.adapters[name].lora_B.normal_()


def two_adapters(base=None):
    """Adapter "default" (r=2 on a, b) and "other" (r=3, rsLoRA, dropout, on b, c), both trained (B ≠ 0)."""
    model = apply_lora(base or Net().double(), rank=2, alpha=4, targets=("a", "b"))
    perturb(model, "default")
    apply_lora(model, rank=3, alpha=5, dropout=0.1, targets=("b", "c"), use_rslora=True, adapter_name="other")
    perturb(model, "other")
    return model.eval()


def base_weights(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "adapters." not in k}


def test_second_adapter_leaves_first_adapters_output_unchanged():
    model = apply_lora(Net().double(), rank=2, alpha=4, targets=("a", "b"))
    perturb(model, "default")
    before = model(X)
    apply_lora(model, rank=3, alpha=5, targets=("b", "c"), adapter_name="other")
    perturb(model, "other")
    assert torch.equal(model(X), before)  # the new adapter is inactive
    set_adapter(model, "other")
    assert not torch.allclose(model(X), before)
    set_adapter(model, "default")
    assert torch.equal(model(X), before)


def test_each_adapter_keeps_its_own_settings():
    model = two_adapters()
    b = model.b
    assert (b.adapters["default"].rank, b.adapters["default"].scaling) == (2, 2.0)
    assert (b.adapters["other"].rank, b.adapters["other"].scaling) == (3, 5 / 3 ** 0.5)
    assert isinstance(b.adapters["default"].dropout, nn.Identity) and b.adapters["other"].dropout.p == 0.1
    assert list(model.a.adapters) == ["default"] and list(model.c.adapters) == ["other"]


def test_list_adapters_gives_configs_and_active_flags():
    model = two_adapters()
    default = LoraConfig(r=2, lora_alpha=4, target_modules=["a", "b"])
    other = LoraConfig(r=3, lora_alpha=5, lora_dropout=0.1, target_modules=["b", "c"], use_rslora=True)
    assert model.lora_configs == {"default": default, "other": other}
    assert list_adapters(model) == {"default": dict(dataclasses.asdict(default), active=True),
                                    "other": dict(dataclasses.asdict(other), active=False)}
    list_adapters(model)["default"]["r"] = 99  # a copy: the model's records stay as they are
    assert model.lora_configs["default"].r == 2


def test_switching_adapters_never_changes_base_weights():
    model = two_adapters()
    before = base_weights(model)
    for names in ("other", ["default", "other"], "default", ["other", "default"]):
        set_adapter(model, names)
        model(X)
    after = base_weights(model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_two_active_adapters_give_base_plus_both_delta_weights():
    model = two_adapters()
    set_adapter(model, ["default", "other"])
    d = {n: layer.adapters for n, layer in lora_layers(model)}
    W = {n: layer.base.weight + sum(a.delta_weight() for a in d[n].values()) for n, layer in lora_layers(model)}
    h = torch.tanh(nn.functional.linear(X, W["a"], model.a.base.bias))
    h = torch.tanh(nn.functional.linear(h, W["b"], model.b.base.bias))
    expected = nn.functional.linear(h, W["c"], model.c.base.bias)
    torch.testing.assert_close(model(X), expected, rtol=0, atol=1e-12)


def test_only_active_adapters_are_trainable_and_the_base_stays_frozen():
    model = two_adapters()
    trainable = lambda: {n for n, p in model.named_parameters() if p.requires_grad}  # noqa: E731
    assert trainable() == {f"{m}.adapters.default.lora_{w}" for m in "ab" for w in "AB"}
    set_adapter(model, "other")
    assert trainable() == {f"{m}.adapters.other.lora_{w}" for m in "bc" for w in "AB"}
    set_adapter(model, ["default", "other"])
    assert len(trainable()) == 8 and not any("base" in n for n in trainable())


def test_single_adapter_view_refuses_a_layer_with_several():
    model = two_adapters()
    assert torch.equal(model.a.lora_A, model.a.adapters["default"].lora_A)
    with pytest.raises(ValueError, match=r"\['default', 'other'\]"):
        _ = model.b.lora_A


@pytest.mark.parametrize("call", [
    lambda m: set_adapter(m, "nope"),
    lambda m: set_adapter(m, ["default", "nope"]),
    lambda m: delete_adapter(m, "nope"),
])
def test_unknown_adapter_name_raises_listing_existing_names(call):
    model = two_adapters()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"unknown adapter 'nope'; the model has \['default', 'other'\]"):
        call(model)
    assert_unchanged(model, before)


@pytest.mark.parametrize("name", ["", "a.b", "a/b", "keys", "training", 3, None])
def test_bad_adapter_name_raises_and_leaves_model_unchanged(name):
    model = two_adapters()
    before = snapshot(model)
    with pytest.raises(ValueError, match="adapter_name="):
        apply_lora(model, rank=2, alpha=4, targets=("c",), adapter_name=name)
    assert_unchanged(model, before)


def test_adding_an_existing_adapter_to_a_layer_again_raises():
    model = two_adapters()
    before = snapshot(model)
    with pytest.raises(ValueError, match="already has LoRA adapter 'other'"):
        apply_lora(model, rank=3, alpha=5, dropout=0.1, targets=("c",), use_rslora=True, adapter_name="other")
    assert_unchanged(model, before)


def test_delete_adapter_restores_the_previous_outputs():
    model = two_adapters()
    before = model(X)  # "other" is not active yet: the output of "default" alone
    set_adapter(model, ["default", "other"])
    assert not torch.allclose(model(X), before)
    delete_adapter(model, "other")
    assert torch.equal(model(X), before)
    assert type(model.c) is nn.Linear and list(model.b.adapters) == ["default"]  # c held only "other"
    assert list(model.lora_configs) == ["default"]


def test_deleting_the_last_adapter_leaves_the_plain_base_model():
    base = Net().double()
    keys, expected = list(base.state_dict()), base(X)
    model = two_adapters(base)
    delete_adapter(model, "other")
    delete_adapter(model, "default")
    assert all(type(m) is not LoRALinear for m in model.modules()) and not hasattr(model, "lora_configs")
    assert list(model.state_dict()) == keys
    assert torch.equal(model(X), expected)


def test_deleting_the_active_adapter_activates_the_first_remaining_one():
    model = two_adapters()
    with pytest.warns(UserWarning, match="'other' is active now"):
        delete_adapter(model, "default")
    assert list_adapters(model)["other"]["active"]


def test_merge_folds_active_adapters_and_unmerge_restores_the_base():
    model = two_adapters().float()
    set_adapter(model, ["default", "other"])
    x = X.float()
    before, weights = model(x), base_weights(model)
    merge_lora(model)
    assert model.b.merged_adapters == ["default", "other"]
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    unmerge_lora(model)
    for k, v in base_weights(model).items():  # W + ΔW - ΔW: float32 rounding, no more
        torch.testing.assert_close(v, weights[k], rtol=0, atol=1e-6)


@pytest.mark.parametrize("call", [lambda m: set_adapter(m, "other"), lambda m: delete_adapter(m, "default")])
def test_switching_or_deleting_while_merged_raises(call):
    model = merge_lora(two_adapters())
    before = snapshot(model)
    with pytest.raises(ValueError, match="unmerge_lora"):
        call(model)
    assert_unchanged(model, before)


def test_merge_and_unload_bakes_the_active_adapters():
    model = two_adapters()
    set_adapter(model, ["other", "default"])
    expected = model(X)
    merge_and_unload(model)
    assert all(type(m) is nn.Linear for m in (model.a, model.b, model.c))
    torch.testing.assert_close(model(X), expected, rtol=0, atol=1e-12)


def test_disable_lora_gives_the_base_output_with_several_adapters():
    base = Net().double()
    expected = base(X)
    model = two_adapters(base)
    set_adapter(model, ["default", "other"])
    with disable_lora(model):
        assert torch.equal(model(X), expected)
    assert not torch.allclose(model(X), expected)


# --- files: PEFT's multi-adapter layout ---

def outputs_per_adapter(model):
    out = {}
    for name in model.lora_configs:
        set_adapter(model, name)
        out[name] = model(X)
    return out


def test_multi_adapter_save_load_roundtrip_restores_every_adapter(tmp_path):
    base = Net().double()
    fresh = Net().double()
    fresh.load_state_dict(base.state_dict())
    model = two_adapters(base)
    save_adapter(model, tmp_path / "ad")
    files = sorted(str(p.relative_to(tmp_path / "ad")) for p in (tmp_path / "ad").rglob("*"))
    assert files == ["adapter_config.json", "adapter_model.safetensors", "other",
                     "other/adapter_config.json", "other/adapter_model.safetensors"]
    load_adapter(fresh, tmp_path / "ad").eval()
    assert fresh.lora_configs == model.lora_configs
    assert list_adapters(fresh)["default"]["active"] and not list_adapters(fresh)["other"]["active"]
    expected, got = outputs_per_adapter(model), outputs_per_adapter(fresh)
    assert all(torch.equal(got[n], expected[n]) for n in expected)


def test_a_named_adapter_is_saved_in_its_sub_folder_and_loads_under_any_name(tmp_path):
    base = Net().double()
    fresh = copy.deepcopy(base)
    model = two_adapters(base)
    save_adapter(model, tmp_path / "ad", adapter_name="other")
    assert sorted(str(p.relative_to(tmp_path / "ad")) for p in (tmp_path / "ad").rglob("*")) == [
        "other", "other/adapter_config.json", "other/adapter_model.safetensors"]  # PEFT's layout: d/<name>/
    load_adapter(fresh, tmp_path / "ad" / "other", adapter_name="mine")  # a folder of one adapter, any name
    set_adapter(model, "other")
    assert list(fresh.lora_configs) == ["mine"] and torch.equal(fresh.eval()(X), model(X))


def test_adapters_saved_one_at_a_time_into_one_folder_all_load_back(tmp_path):
    base = Net().double()
    fresh, fresh_too = copy.deepcopy(base), copy.deepcopy(base)
    model = two_adapters(base)
    save_adapter(model, tmp_path / "ad", adapter_name="other")
    save_adapter(model, tmp_path / "ad", adapter_name="default")  # adds; "other" stays
    assert saved_adapters(tmp_path / "ad") == {"default": tmp_path / "ad", "other": tmp_path / "ad" / "other"}
    load_adapter(fresh, tmp_path / "ad").eval()
    expected, got = outputs_per_adapter(model), outputs_per_adapter(fresh)
    assert list(got) == ["default", "other"] and all(torch.equal(got[n], expected[n]) for n in expected)
    one = load_adapter(fresh_too, tmp_path / "ad", adapter_name="other")
    assert list(one.lora_configs) == ["other"]  # one adapter of the folder, by name


def test_a_folder_with_a_default_sub_folder_and_top_level_files_is_refused(tmp_path):
    save_adapter(two_adapters(), tmp_path / "ad")
    save_adapter(two_adapters(), tmp_path / "elsewhere", adapter_name="other")
    (tmp_path / "elsewhere" / "other").rename(tmp_path / "ad" / "default")  # now two "default" adapters
    model = Net().double()
    before = snapshot(model)
    with pytest.raises(ValueError, match="both would be adapter 'default'"):
        load_adapter(model, tmp_path / "ad")
    assert_unchanged(model, before)
    with pytest.raises(ValueError, match="both would be adapter 'default'"):
        save_adapter(two_adapters(), tmp_path / "ad", adapter_name="other")


def test_loading_a_multi_adapter_directory_is_all_or_nothing(tmp_path):
    save_adapter(two_adapters(), tmp_path / "ad")
    path = tmp_path / "ad" / "other" / "adapter_model.safetensors"
    tensors, meta = load_file(path)
    tensors["base_model.model.c.lora_B.weight"] = torch.full((5, 3), float("nan"), dtype=torch.float64)
    save_file(tensors, path, meta)
    model = Net().double()
    before = snapshot(model)
    with pytest.raises(ValueError, match="other/adapter_model.safetensors.*not a finite"):
        load_adapter(model, tmp_path / "ad")  # "default" is fine, but nothing of it may be applied either
    assert_unchanged(model, before)


def test_an_interrupted_save_of_several_adapters_writes_none_of_them(tmp_path, monkeypatch):
    target = tmp_path / "ad"
    save_adapter(apply_lora(Net().double(), rank=2, alpha=4, targets=("a",)), target)
    old = {p.name: p.read_bytes() for p in target.iterdir()}
    calls = []

    def failing_serialize(tensors, metadata=None):
        calls.append(metadata)
        if len(calls) == 2:  # the second adapter's tensors: "default"'s files are staged already
            raise OSError("disk full")
        return serialize(tensors, metadata)

    monkeypatch.setattr(lora.io.adapter_io, "serialize", failing_serialize)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(two_adapters(), target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ad"]  # no temporary left behind


def test_unknown_adapter_name_in_save_raises(tmp_path):
    with pytest.raises(ValueError, match=r"unknown adapter 'nope'; the model has \['default', 'other'\]"):
        save_adapter(two_adapters(), tmp_path / "ad", adapter_name="nope")
    assert not (tmp_path / "ad").exists()


def test_deleting_the_active_adapter_of_three_or_more_activates_the_first_remaining_one():
    # with two adapters the first and the last remaining coincide; with four, first, last and
    # most recently added all differ, so only the first-remaining rule passes
    model = two_adapters()
    for name, rank in (("third", 1), ("fourth", 2)):
        apply_lora(model, rank=rank, alpha=2, targets=("a", "c"), adapter_name=name)
        perturb(model, name)
    set_adapter(model, "third")
    with pytest.warns(UserWarning, match="'default' is active now"):
        delete_adapter(model, "third")
    assert [n for n, c in list_adapters(model).items() if c["active"]] == ["default"]
    set_adapter(model, "fourth")
    with pytest.warns(UserWarning, match="'default' is active now"):
        delete_adapter(model, "fourth")
    set_adapter(model, "default")
    with pytest.warns(UserWarning, match="'other' is active now"):
        delete_adapter(model, "default")
    assert list_adapters(model)["other"]["active"]
