"""LoraConfig (lora/config.py): one settings object, checked once, with PEFT's fields and PEFT's file both ways.

PEFT's own adapter_config.json files are in tests/fixtures/ (written by the make_peft_*_fixture.py scripts there).
"""

import dataclasses
import json
import pathlib
import re

import pytest
import torch

from helpers import tiny_gpt
from lora.config import LoraConfig, config_from_keywords
from lora.inject import apply_lora
from lora.model_layers import lora_modules

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
PEFT_CONFIGS = sorted(FIXTURES.rglob("adapter_config.json"))


def test_config_and_keyword_form_give_the_same_model():
    by_config = apply_lora(tiny_gpt(), LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"]))
    by_keywords = apply_lora(tiny_gpt(), rank=4, alpha=8, targets="c_attn")
    assert by_config.lora_configs == by_keywords.lora_configs
    assert isinstance(by_config.lora_configs["default"], LoraConfig)
    assert [n for n, _ in lora_modules(by_config)] == [n for n, _ in lora_modules(by_keywords)]
    a, b = by_config.state_dict(), by_keywords.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same seed, same A's


def test_keyword_names_map_onto_peft_fields():
    config = config_from_keywords(rank=3, alpha=6, dropout=0.1, targets="c_attn, c_fc", use_rslora=True,
                                  init="gaussian", exclude="re:.*h\\.0.*", rank_pattern={"c_fc": 2})
    assert (config.r, config.lora_alpha, config.lora_dropout, config.use_rslora) == (3, 6, 0.1, True)
    assert config.target_modules == ("c_attn", "c_fc") and config.init_lora_weights == "gaussian"
    assert config.exclude_modules == re.compile(r".*h\.0.*") and config.rank_pattern == {"c_fc": 2}
    with pytest.raises(ValueError, match="unknown option 'rnak'"):
        config_from_keywords(rnak=3)


@pytest.mark.parametrize("field, value, match", [
    ("r", 0, "r=0: must be a positive integer"),
    ("r", True, "r=True"),
    ("r", 2.0, "r=2.0"),
    ("lora_alpha", float("nan"), "lora_alpha=nan"),
    ("lora_alpha", -1, "lora_alpha=-1"),
    ("lora_dropout", 1.0, "lora_dropout=1.0"),
    ("use_rslora", 1, "use_rslora=1"),
    ("use_dora", "yes", "use_dora='yes'"),
    ("init_lora_weights", False, "init_lora_weights=False"),
    ("init_lora_weights", "olora", "init_lora_weights='olora'"),
    ("init_lora_weights", "pissa_niter_", "init_lora_weights='pissa_niter_'"),
    ("target_modules", None, "target_modules=None"),
    ("target_modules", [], "target_modules=\\[\\]"),
    ("target_modules", "c_(attn", "not a valid regular expression"),
    ("target_modules", ["c_attn", "all-linear"], "cannot be combined"),
    ("layers_to_transform", [-1], "layers_to_transform=\\[-1\\]"),
    ("layers_pattern", "h", "needs layers_to_transform"),
    ("rank_pattern", {"c_attn": 1.5}, "rank_pattern\\['c_attn'\\]=1.5"),
    ("alpha_pattern", {"c_attn": float("inf")}, "alpha_pattern\\['c_attn'\\]=inf"),
    ("rank_pattern", [("c_attn", 2)], "give a dict"),
])
def test_a_bad_field_is_refused_by_name(field, value, match):
    with pytest.raises(ValueError, match=match):
        LoraConfig(**{field: value})


def test_init_values_are_peft_s():
    assert LoraConfig().init == "default"
    assert LoraConfig(init_lora_weights="pissa_niter_16").init == "pissa_niter_16"
    assert LoraConfig(init_lora_weights="gaussian").init == "gaussian"


def test_a_str_target_is_a_full_match_regex_as_in_peft():
    config = LoraConfig(target_modules=r".*\.h\.1\.attn\.c_attn")
    model = apply_lora(tiny_gpt(), config)
    assert [n for n, _ in lora_modules(model)] == ["transformer.h.1.attn.c_attn"]
    with pytest.raises(ValueError, match="a str target_modules is a regular expression"):
        apply_lora(tiny_gpt(), LoraConfig(target_modules="c_attn"))  # a suffix is not a full match


@pytest.mark.parametrize("path", PEFT_CONFIGS, ids=[str(p.parent.relative_to(FIXTURES)) for p in PEFT_CONFIGS])
def test_peft_s_adapter_config_round_trips_through_lora_config(path):
    written = json.loads(path.read_text())
    config = LoraConfig.from_peft(written)
    assert LoraConfig.from_peft(config.to_peft()) == config
    again = config.to_peft(base_model_name_or_path=written["base_model_name_or_path"],
                           fan_in_fan_out=written["fan_in_fan_out"])
    if written["init_lora_weights"] in ("pissa", True) or str(written["init_lora_weights"]).startswith("pissa"):
        written["init_lora_weights"] = True  # a PiSSA adapter is saved as plain LoRA (see LoraConfig.to_peft)
    if isinstance(written["target_modules"], list):  # PEFT keeps a set: its order varies from run to run
        assert sorted(again.pop("target_modules")) == sorted(written.pop("target_modules"))
    assert again == written


def test_from_peft_names_the_file_and_the_key_as_the_file_spells_it():
    written = json.loads((FIXTURES / "peft_gpt2_tiny" / "adapter" / "adapter_config.json").read_text())
    with pytest.raises(ValueError, match=r"^my/adapter_config.json: target_modules=None"):
        LoraConfig.from_peft(dict(written, target_modules=None), source="my/adapter_config.json")
    with pytest.raises(ValueError, match="lora_dropout=-0.5"):
        LoraConfig.from_peft(dict(written, lora_dropout=-0.5))
    with pytest.raises(ValueError, match="use_qalora=True asks for a PEFT feature"):
        LoraConfig.from_peft(dict(written, use_qalora=True))


def test_a_config_is_a_value_compared_field_by_field():
    assert LoraConfig(target_modules=["c_attn", "c_fc"]) == LoraConfig(target_modules=("c_attn", "c_fc"))
    assert dataclasses.replace(LoraConfig(), r=4) == LoraConfig(r=4)
    assert LoraConfig(r=4) != LoraConfig(r=8)
