"""Every lora entry point under bad or hostile input: a clear ValueError naming the value and the place,
and the model and the files exactly as they were. Grouped by entry point.
"""

import copy
import json
import math

import pytest
import torch
import torch.nn as nn

from helpers import assert_unchanged, snapshot
from lora.combine import add_weighted_adapter
from lora.config import LoraConfig
from lora.inject import apply_lora
from lora.io.adapter_io import load_adapter, lora_state_dict, save_adapter
from lora.io.safetensors_io import load_file, save_file
from lora.merge import merge_and_unload, merge_lora, unmerge_lora
from lora.model_layers import active_adapters, lora_modules
from lora.quant.nf4_linear import quantize_model
from lora.quant.requantize import merge_and_requantize
from lora.switching import delete_adapter, set_adapter

X = torch.randint(0, 20, (3, 5), generator=torch.Generator().manual_seed(1))


class Net(nn.Module):
    """An embedding and two linear layers: every kind of layer LoRA adapts."""

    def __init__(self):
        super().__init__()
        self.e, self.a, self.b = nn.Embedding(20, 12), nn.Linear(12, 10), nn.Linear(10, 9)

    def forward(self, idx):
        return self.b(torch.tanh(self.a(self.e(idx))))


def with_nonzero_adapters(model):
    with torch.no_grad():
        for _, layer in lora_modules(model):
            for adapter in layer.adapters.values():
                for t in adapter.factors():
                    t.normal_()
    return model


def three_adapters():
    """"default" (r=2 on a, b, e), "two" (r=3 on a, e), "three" (r=1 on b), every B (and embedding A) nonzero."""
    torch.manual_seed(0)
    model = apply_lora(Net().double(), rank=2, alpha=4, targets=("a", "b", "e"))
    apply_lora(model, rank=3, alpha=6, targets=("a", "e"), adapter_name="two")
    apply_lora(model, rank=1, alpha=1, targets=("b",), adapter_name="three")
    return with_nonzero_adapters(model).eval()


def refused(fn, model, match, error=ValueError):
    before = snapshot(model)
    with pytest.raises(error, match=match):
        fn()
    assert_unchanged(model, before)


class TestApplyLora:
    @pytest.mark.parametrize("name", ["", "a/b", "a.b", "keys", 3, None])
    def test_a_bad_adapter_name_is_refused(self, name):
        model = Net()
        refused(lambda: apply_lora(model, targets=("a",), adapter_name=name), model, "adapter_name=")

    def test_a_rank_above_a_layers_size_is_refused_naming_it(self):
        model = Net()
        refused(lambda: apply_lora(model, rank=13, targets=("a", "e")), model, r"rank=13 exceeds .* of 'e'")

    def test_pissa_with_a_rank_above_min_dims_is_refused(self):
        model = Net()
        refused(lambda: apply_lora(model, rank=11, targets=("a",), init="pissa"), model, r"rank=11 exceeds .* of 'a'")

    def test_dora_and_pissa_on_an_embedding_are_refused(self):
        model = Net()
        refused(lambda: apply_lora(model, targets=("e",), use_dora=True), model, "'e' is an embedding")
        refused(lambda: apply_lora(model, targets=("e",), init="pissa"), model, "'e' is an embedding")

    @pytest.mark.parametrize("kwargs, match", [
        (dict(targets=("nope",)), "target 'nope' matches no module"),
        (dict(targets="re:nothing.*"), "matches no module name in full"),
        (dict(targets=("a",), exclude=("b",)), "exclude 'b' matches none"),
        (dict(targets=("a", "b"), rank_pattern={"c": 2}), "rank_pattern key 'c' matches none"),
        (dict(targets=("a", "b"), alpha_pattern={"(": 2}), "not a valid regular expression"),
    ])
    def test_patterns_that_match_nothing_are_refused(self, kwargs, match):
        model = Net()
        refused(lambda: apply_lora(model, **kwargs), model, match)

    def test_overlapping_rank_patterns_take_the_first_key_as_peft_does(self):
        model = apply_lora(Net(), rank=2, targets=("a", "b"), rank_pattern={"a": 3, "a|b": 4})
        assert {n: layer.rank for n, layer in lora_modules(model)} == {"a": 3, "b": 4}

    def test_a_config_and_keywords_together_are_refused(self):
        model = Net()
        refused(lambda: apply_lora(model, LoraConfig(target_modules=["a"]), rank=4), model, "not both")
        refused(lambda: apply_lora(model, 8, 16), model, "give a lora.LoraConfig")  # the old positional form


class TestSetAndDeleteAdapter:
    def test_unknown_names_are_refused_everywhere(self):
        model = three_adapters()
        refused(lambda: set_adapter(model, "nope"), model, "unknown adapter 'nope'")
        refused(lambda: delete_adapter(model, "nope"), model, "unknown adapter 'nope'")
        refused(lambda: lora_state_dict(model, "nope"), model, "unknown adapter 'nope'")
        refused(lambda: add_weighted_adapter(model, ["nope"], [1.0], "x"), model, "unknown adapter 'nope'")

    def test_switching_while_merged_is_refused(self):
        model = merge_lora(three_adapters())
        refused(lambda: set_adapter(model, "two"), model, "is merged")

    def test_deleting_the_only_active_adapter_activates_the_first_remaining_one(self):
        model = three_adapters()
        set_adapter(model, "two")
        with pytest.warns(UserWarning, match="'default' is active now"):
            delete_adapter(model, "two")
        assert active_adapters(model) == ["default"]
        set_adapter(model, "three")
        with pytest.warns(UserWarning, match="'default' is active now"):
            delete_adapter(model, "three")  # not the last remaining one: the first
        assert active_adapters(model) == ["default"]

    def test_deleting_every_adapter_leaves_the_plain_base_model(self):
        base = Net().double()
        model = three_adapters()
        for name in ["three", "default", "two"]:
            with pytest.warns(UserWarning) if name == "default" else _no_warning():
                delete_adapter(model, name)
        assert not list(lora_modules(model)) and not hasattr(model, "lora_configs")
        assert model.state_dict().keys() == base.state_dict().keys()


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


class TestAddWeightedAdapter:
    @pytest.mark.parametrize("kwargs, match", [
        (dict(weights=[1.0]), "give a list of 2 numbers"),
        (dict(weights=[1.0, math.nan]), "nan is not a finite number"),
        (dict(weights=[1.0, True]), "True is not a finite number"),
        (dict(combination_type="linear"), "needs adapters of one rank"),
        (dict(combination_type="ties"), "combination_type='ties'"),
        (dict(adapter_name="two"), "exists already"),
        (dict(adapter_name="a.b"), "adapter_name='a.b'"),
        (dict(svd_rank=0), "svd_rank=0"),
        (dict(svd_rank=11), "rank 11 exceeds min"),
    ])
    def test_bad_arguments_are_refused(self, kwargs, match):
        model = three_adapters()
        args = dict(adapters=["default", "two"], weights=[1.0, -0.5], adapter_name="mix") | kwargs
        refused(lambda: add_weighted_adapter(model, **args), model, match)

    def test_adapters_of_different_ranks_targets_and_alphas_combine_exactly_with_cat(self):
        model = add_weighted_adapter(three_adapters(), ["two", "three"], [0.5, 2.0], "mix", "cat")
        for _, layer in lora_modules(model):
            parts = [w * layer.adapters[a].delta_weight() for a, w in (("two", 0.5), ("three", 2.0)) if a in layer.adapters]
            torch.testing.assert_close(layer.adapters["mix"].delta_weight(), sum(parts), rtol=0, atol=1e-12)

    def test_embeddings_combine_like_linear_layers(self):
        model = add_weighted_adapter(three_adapters(), ["default", "two"], [1.0, -1.0], "diff", "svd", svd_rank=5)
        emb = model.e
        want = emb.adapters["default"].delta_weight() - emb.adapters["two"].delta_weight()  # rank <= 5
        torch.testing.assert_close(emb.adapters["diff"].delta_weight(), want, rtol=0, atol=1e-10)

    def test_the_svd_default_rank_is_the_largest_input_rank(self):
        model = add_weighted_adapter(three_adapters(), ["default", "two", "three"], [1.0, 1.0, 1.0], "mix", "svd")
        assert {layer.adapters["mix"].rank for _, layer in lora_modules(model)} == {3}  # max(2, 3, 1), PEFT's rule


class TestMerge:
    def test_merging_a_quantized_base_is_refused_naming_the_layer(self):
        model = Net()
        quantize_model(model, ("a", "b"))
        apply_lora(model, targets=("a",))
        refused(lambda: merge_lora(model), model, r"'a' \(adapters \['default'\]\): cannot merge into a quantized")

    def test_a_non_finite_merge_names_the_layer_and_changes_nothing(self):
        model = three_adapters()
        with torch.no_grad():
            model.b.adapters["default"].lora_B.fill_(1e308)
        refused(lambda: merge_lora(model), model, r"'b' \(adapters \['default'\]\): W \+ ΔW .* non-finite")
        refused(lambda: merge_and_unload(model), model, "'b'")

    def test_unmerge_restores_the_weights_of_every_layer_kind(self):
        model = three_adapters()
        set_adapter(model, ["default", "two"])
        before = {k: v.clone() for k, v in model.state_dict().items()}
        unmerge_lora(merge_lora(model))
        after = model.state_dict()
        assert all(torch.allclose(after[k], before[k], rtol=0, atol=1e-12) for k in before)


class TestQuantize:
    @pytest.mark.parametrize("blocksize", [96, 2, 2**40])
    def test_any_even_blocksize_quantizes_without_padding_a_block(self, blocksize):
        model = Net()
        quantize_model(model, ("a",), blocksize=blocksize)  # 2**40 is one block; nothing of that size is allocated
        assert model.a.blocksize == blocksize

    def test_a_requantizing_merge_keeps_an_odd_blocksize(self):
        model = Net()
        quantize_model(model, ("a", "b"), blocksize=30, double_quant=False)
        with_nonzero_adapters(apply_lora(model, targets=("a", "b")))
        merge_and_requantize(model)
        assert (model.a.blocksize, model.a.weight_q.double_quant) == (30, False)

    def test_a_state_dict_with_another_blocksize_is_refused_by_name_before_anything_is_copied(self):
        source, target = Net(), Net()
        quantize_model(source, ("a", "b"), blocksize=64)
        quantize_model(target, ("a", "b"), blocksize=96)
        refused(lambda: target.load_state_dict(source.state_dict()), target, r"state dict of a: blocksizes \[64, 256\]")

    def test_a_nan_scale_in_the_last_layer_is_refused_before_the_first_is_overwritten(self):
        source, target = Net(), Net()
        quantize_model(source, ("a", "b"), double_quant=False)
        quantize_model(target, ("a", "b"), double_quant=False)
        state = source.state_dict()
        state["b.weight_absmax"] = torch.full_like(state["b.weight_absmax"], math.nan)
        refused(lambda: target.load_state_dict(state), target, "state dict of b: absmax holds")

    def test_a_state_dict_without_blocksizes_is_refused(self):
        source, target = Net(), Net()
        quantize_model(source, ("a",))
        quantize_model(target, ("a",))
        state = {k: v for k, v in source.state_dict().items() if k != "a.weight_blocksizes"}
        refused(lambda: target.load_state_dict(state), target, r"\['weight_blocksizes'\] missing")


class TestDoraOnAPrunedUnit:
    def test_a_zero_output_row_stays_finite_and_equals_the_base_at_init(self):
        base = nn.Linear(6, 5).double()
        with torch.no_grad():
            base.weight[2] = 0  # a pruned unit
        x = torch.randn(4, 6, dtype=torch.float64)
        expected = base(x)
        model = apply_lora(nn.Sequential(base), rank=2, alpha=4, targets=("0",), use_dora=True)
        assert torch.isfinite(model(x)).all() and torch.equal(model(x), expected)
        merged = merge_and_unload(copy.deepcopy(model))
        torch.testing.assert_close(merged(x), expected, rtol=0, atol=1e-12)


class TestSaveAndLoad:
    def test_a_mixed_rank_adapter_built_by_hand_round_trips_to_identical_logits(self, tmp_path):
        model = apply_lora(Net().double(), rank=2, alpha=4, targets=("a",))
        apply_lora(model, rank=2, alpha=4, targets=("b",))  # extended to one more layer
        model.b.delete_adapter("default")  # ... then rebuilt by hand at another rank and alpha
        model.b.add_adapter("default", LoraConfig(r=5, lora_alpha=3))
        model.b.set_active(["default"])
        with_nonzero_adapters(model).eval()
        save_adapter(model, tmp_path / "ad")
        written = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
        assert written["rank_pattern"] == {"^b": 5} and written["alpha_pattern"] == {"^b": 3}
        fresh = Net().double()
        fresh.load_state_dict({k.replace(".base", ""): v for k, v in model.state_dict().items() if "adapters" not in k})
        load_adapter(fresh, tmp_path / "ad")
        assert torch.equal(fresh.eval()(X), model(X))

    def test_the_library_refuses_none_of_its_own_files(self, tmp_path):
        model = three_adapters()
        save_adapter(model, tmp_path / "ad")
        fresh = Net().double()
        fresh.load_state_dict({k.replace(".base", ""): v for k, v in model.state_dict().items() if "adapters" not in k})
        load_adapter(fresh, tmp_path / "ad")
        for name in ["default", "two", "three"]:
            set_adapter(model, name)
            set_adapter(fresh, name)
            assert torch.equal(fresh.eval()(X), model(X))

    def test_a_missing_dora_magnitude_says_use_dora_asks_for_it(self, tmp_path):
        model = apply_lora(Net().double(), rank=2, targets=("a",), use_dora=True)
        save_adapter(model, tmp_path / "ad")
        path = tmp_path / "ad" / "adapter_model.safetensors"
        tensors, meta = load_file(path)
        save_file({k: v for k, v in tensors.items() if "magnitude" not in k}, path, meta)
        fresh = Net().double()
        refused(lambda: load_adapter(fresh, tmp_path / "ad"), fresh, "use_dora=True in the config asks for DoRA's magnitude")
