"""Choosing layers like PEFT (lora/targets.py): regex targets, exclusions, layer indices, rank/alpha patterns."""

import json
import pathlib
import re

import pytest
import torch.nn as nn

from helpers import tiny_gpt
from lora.safetensors_io import load_file
from lora.targets import (
    as_regex,
    from_peft_targets,
    layer_index,
    layer_rank_alpha,
    pattern_key,
    resolve_rank_alpha,
    select_layers,
    to_peft_targets,
)
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
        select_layers(model, "re:c_attn")  # a suffix is not a full match


def test_plain_string_stays_a_name_list():
    model = tiny_gpt()
    assert names(select_layers(model, "c_attn, c_fc")) == names(select_layers(model, ["c_attn", "c_fc"]))


def test_peft_str_target_modules_is_a_regex_both_ways():
    pattern = from_peft_targets(r".*\.c_attn")
    assert isinstance(pattern, re.Pattern) and pattern.pattern == r".*\.c_attn"
    assert from_peft_targets("all-linear") == "all-linear" and from_peft_targets(["c_attn"]) == ["c_attn"]
    assert to_peft_targets(pattern) == r".*\.c_attn" and to_peft_targets("re:x") == "x"
    assert to_peft_targets("c_attn,c_fc") == ["c_attn", "c_fc"]


def test_exclude_removes_and_must_match():
    model = tiny_gpt()
    chosen = select_layers(model, ["c_attn", "c_proj"], exclude=["mlp.c_proj"])
    assert not any(n.endswith("mlp.c_proj") for n in names(chosen)) and any("attn.c_proj" in n for n in names(chosen))
    with pytest.raises(ValueError, match="exclude 'c_fc' matches none of the chosen layers"):
        select_layers(model, ["c_attn"], exclude=["c_fc"])
    with pytest.raises(ValueError, match="leaves no layer"):
        select_layers(model, ["c_attn"], exclude="re:.*")


def test_layers_to_transform_keeps_indices_and_checks_them():
    model = tiny_gpt()
    chosen = select_layers(model, ["c_attn"], layers_to_transform=1, layers_pattern="h")
    assert names(chosen) == ["transformer.h.1.attn.c_attn"]
    with pytest.raises(ValueError, match=r"layers_to_transform has \[7\]"):
        select_layers(model, ["c_attn"], layers_to_transform=[7])
    with pytest.raises(ValueError, match="finds no layer index"):
        select_layers(model, ["c_attn"], layers_to_transform=[0], layers_pattern="blocks")
    with pytest.raises(ValueError, match="regular-expression target"):
        select_layers(model, "re:.*c_attn", layers_to_transform=[0])
    with pytest.raises(ValueError, match="needs layers_to_transform"):
        select_layers(model, ["c_attn"], layers_pattern="h")


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
    assert layer_rank_alpha("transformer.h.0.mlp.c_proj", 2, 8, patterns, {"mlp.*": 1}) == (3, 1)


def test_unmatched_or_bad_pattern_keys_raise():
    chosen = ["transformer.h.0.attn.c_attn"]
    with pytest.raises(ValueError, match="rank_pattern key 'c_fc' matches none"):
        resolve_rank_alpha(chosen, 2, 4, rank_pattern={"c_fc": 4})
    with pytest.raises(ValueError, match="not a valid regular expression"):
        resolve_rank_alpha(chosen, 2, 4, alpha_pattern={"c_(attn": 4})
    with pytest.raises(ValueError, match=r"rank_pattern\['c_attn'\]=0"):
        resolve_rank_alpha(chosen, 2, 4, rank_pattern={"c_attn": 0})
    assert as_regex("c_attn") is None


@pytest.mark.parametrize("adapter", ["patterns", "layers", "regex", "dora", "pissa", "embedding"])
def test_select_and_patterns_give_peft_layers_ranks_and_counts(adapter):
    """PEFT's config on the tiny GPT-2 layout: our choice, per-layer (r, α) and trainable count equal PEFT's."""
    config = json.loads((VARIANTS / adapter / "adapter_config.json").read_text())
    model = load_pretrained(FIXTURES / "peft_gpt2_tiny" / "base")
    types = (nn.Linear, nn.Embedding)
    chosen = select_layers(model, from_peft_targets(config["target_modules"]),
                           exclude=from_peft_targets(config["exclude_modules"]),
                           layers_to_transform=config["layers_to_transform"],
                           layers_pattern=config["layers_pattern"], types=types)
    settings = resolve_rank_alpha(names(chosen), config["r"], config["lora_alpha"],
                                  config["rank_pattern"], config["alpha_pattern"])
    expected = PEFT[adapter]
    assert settings == {n: (row["r"], row["lora_alpha"]) for n, row in expected["layers"].items()}
    modules = dict(chosen)
    trainable = 0
    for n, (r, _) in settings.items():
        m = modules[n]
        d_in, d_out = (m.num_embeddings, m.embedding_dim) if isinstance(m, nn.Embedding) else (m.in_features, m.out_features)
        trainable += r * (d_in + d_out) + (d_out if config["use_dora"] else 0)  # DoRA adds m, one per output row
    assert trainable == expected["trainable"]
    if adapter == "patterns":  # the tensors PEFT saved have the ranks we resolve
        tensors, _ = load_file(VARIANTS / adapter / "adapter_model.safetensors")
        for n, (r, _) in settings.items():
            assert tensors[f"base_model.model.{n}.lora_A.weight"].shape[0] == r
