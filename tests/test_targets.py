"""Choosing layers like PEFT (lora/targets.py): regex targets, exclusions, layer indices, rank/alpha patterns."""

import json
import pathlib
import re

import pytest
import torch.nn as nn

from helpers import tiny_gpt
from lora.config import LoraConfig
from lora.inject import choose_layers
from lora.io.safetensors_io import load_file
from lora.targets import check_pattern_keys, layer_index, pattern_key, peft_targets, select_layers, user_targets
from minigpt.pretrained import load_pretrained

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
VARIANTS = FIXTURES / "peft_variants"
PEFT = json.loads((VARIANTS / "layers.json").read_text())


def names(chosen):
    return [n for n, _ in chosen]


def test_regex_target_must_match_whole_name():
    model = tiny_gpt()
    chosen = select_layers(model, re.compile(r".*\.h\.0\.attn\.c_(attn|proj)"))
    assert names(chosen) == ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj"]
    with pytest.raises(ValueError, match="matches no module name in full"):
        select_layers(model, user_targets("re:c_attn"))  # a suffix is not a full match


def test_our_plain_string_is_a_name_list_and_peft_s_is_a_regex():
    model = tiny_gpt()
    assert user_targets("c_attn, c_fc") == user_targets(["c_attn", "c_fc"]) == ("c_attn", "c_fc")
    assert names(select_layers(model, user_targets("c_attn, c_fc"))) == names(select_layers(model, ("c_attn", "c_fc")))
    pattern = peft_targets(r".*\.c_attn")
    assert isinstance(pattern, re.Pattern) and pattern.pattern == r".*\.c_attn"
    assert user_targets("re:.*x") == re.compile(".*x") and user_targets(pattern) is pattern
    assert peft_targets("all-linear") == user_targets("all-linear") == user_targets(["all-linear"]) == "all-linear"
    assert peft_targets({"c_fc", "c_attn"}) == ("c_attn", "c_fc")  # PEFT keeps a set: sorted, so it is stable
    for bad in (None, [], [""], ["c_attn", "all-linear"], "re:(", 3):
        with pytest.raises(ValueError, match="targets"):
            user_targets(bad)


def test_exclude_removes_and_must_match():
    model = tiny_gpt()
    chosen = select_layers(model, ("c_attn", "c_proj"), exclude=("mlp.c_proj",))
    assert not any(n.endswith("mlp.c_proj") for n in names(chosen)) and any("attn.c_proj" in n for n in names(chosen))
    with pytest.raises(ValueError, match="exclude 'c_fc' matches none of the chosen layers"):
        select_layers(model, ("c_attn",), exclude=("c_fc",))
    with pytest.raises(ValueError, match="leaves no layer"):
        select_layers(model, ("c_attn",), exclude=re.compile(".*"))


def test_layers_to_transform_keeps_indices_and_checks_them():
    model = tiny_gpt()
    chosen = select_layers(model, ("c_attn",), layers_to_transform=1, layers_pattern="h")
    assert names(chosen) == ["transformer.h.1.attn.c_attn"]
    with pytest.raises(ValueError, match=r"layers_to_transform has \[7\]"):
        select_layers(model, ("c_attn",), layers_to_transform=[7])
    with pytest.raises(ValueError, match="finds no layer index"):
        select_layers(model, ("c_attn",), layers_to_transform=[0], layers_pattern="blocks")
    with pytest.raises(ValueError, match="regular-expression target"):
        select_layers(model, re.compile(".*c_attn"), layers_to_transform=[0])
    with pytest.raises(ValueError, match="needs layers_to_transform"):
        select_layers(model, ("c_attn",), layers_pattern="h")


def test_layer_index_follows_peft_rule():
    assert layer_index("transformer.h.3.attn.c_attn") == 3
    assert layer_index("model.layers.2.experts.5.w1") == 2  # the first index, not an expert's
    assert layer_index("model.layers.2.experts.5.w1", layers_pattern="experts") == 5
    assert layer_index("lm_head") is None


def test_pattern_key_is_anchored_at_a_dot_and_the_end():
    patterns = {"attn.c_attn": 4, "c_proj": 3}
    assert pattern_key(patterns, "transformer.h.0.attn.c_attn") == "attn.c_attn"
    assert pattern_key(patterns, "transformer.h.0.attn.c_attn_x") is None
    assert pattern_key(patterns, "transformer.h.0.mlp.xc_proj") is None  # must start after a dot
    config = LoraConfig(r=2, lora_alpha=8, rank_pattern=patterns, alpha_pattern={"mlp.*": 1})
    assert config.rank_alpha("transformer.h.0.mlp.c_proj") == (3, 1)
    assert config.rank_alpha("transformer.h.0.mlp.c_fc") == (2, 1)


def test_unmatched_or_bad_pattern_keys_raise():
    chosen = ["transformer.h.0.attn.c_attn"]
    with pytest.raises(ValueError, match="rank_pattern key 'c_fc' matches none"):
        check_pattern_keys("rank_pattern", {"c_fc": 4}, chosen)
    with pytest.raises(ValueError, match="not a valid regular expression"):
        LoraConfig(alpha_pattern={"c_(attn": 4})
    with pytest.raises(ValueError, match=r"rank_pattern\['c_attn'\]=0"):
        LoraConfig(rank_pattern={"c_attn": 0})


@pytest.mark.parametrize("adapter", ["patterns", "layers", "regex", "dora", "pissa", "embedding"])
def test_select_and_patterns_give_peft_layers_ranks_and_counts(adapter):
    """PEFT's config on the tiny GPT-2 layout: our choice, per-layer (r, α) and trainable count equal PEFT's."""
    config = LoraConfig.from_peft(json.loads((VARIANTS / adapter / "adapter_config.json").read_text()))
    model = load_pretrained(FIXTURES / "peft_gpt2_tiny" / "base")
    chosen = choose_layers(model, config)
    settings = {n: (r, a) for n, (_, r, a) in chosen.items()}
    expected = PEFT[adapter]
    assert settings == {n: (row["r"], row["lora_alpha"]) for n, row in expected["layers"].items()}
    modules = {n: m for n, (m, _, _) in chosen.items()}
    trainable = 0
    for n, (r, _) in settings.items():
        m = modules[n]
        d_in, d_out = (m.num_embeddings, m.embedding_dim) if isinstance(m, nn.Embedding) else (m.in_features, m.out_features)
        trainable += r * (d_in + d_out) + (d_out if config.use_dora else 0)  # DoRA adds m, one per output row
    assert trainable == expected["trainable"]
    if adapter == "patterns":  # the tensors PEFT saved have the ranks we resolve
        tensors, _ = load_file(VARIANTS / adapter / "adapter_model.safetensors")
        for n, (r, _) in settings.items():
            assert tensors[f"base_model.model.{n}.lora_A.weight"].shape[0] == r
