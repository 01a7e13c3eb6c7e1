"""Adapters in PEFT's file layout (lora/io/adapter_io.py): round trips, PEFT parity, refusing bad files.

PEFT's own files are in tests/fixtures/peft_gpt2_tiny/, written by tests/fixtures/make_peft_fixture.py.
"""

import copy
import json
import pathlib
import struct

import pytest
import torch
import torch.nn as nn

import lora.io.adapter_io
from helpers import assert_unchanged, snapshot
from lora.config import read_adapter_config
from lora.inject import apply_lora
from lora.io.adapter_io import load_adapter, lora_state_dict, save_adapter
from lora.io.safetensors_io import load_file, save_file
from lora.merge import merge_lora
from lora.model_layers import lora_layers
from minigpt.model import GPT, GPTConfig
from minigpt.pretrained import load_pretrained

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "peft_gpt2_tiny"
TINY_GPT2 = dict(vocab_size=100, block_size=32, n_layer=2, n_head=2, n_embd=32)  # the fixture's shapes
PEFT_TARGETS = ["c_attn", "c_proj", "c_fc"]


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 8), nn.Tanh())
        self.decoder = nn.Linear(8, 5)

    def forward(self, x):
        return self.decoder(self.encoder(x))


def adapted(model=None, targets=("encoder.0", "decoder"), rank=2, alpha=4):
    model = apply_lora(model or TwoLayer().double(), rank=rank, alpha=alpha, targets=targets)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B.normal_()
    return model


def read_safetensors_header(path):
    """The test's own parser: 8-byte little-endian length, then that many bytes of JSON."""
    raw = pathlib.Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n])


X = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def test_lora_state_dict_has_only_lora_keys():
    model = adapted()
    sd = lora_state_dict(model)
    assert sorted(sd) == ["decoder.adapters.default.lora_A", "decoder.adapters.default.lora_B",
                          "encoder.0.adapters.default.lora_A", "encoder.0.adapters.default.lora_B"]
    full = model.state_dict()
    assert all(torch.equal(sd[k], full[k]) for k in sd)


def test_adapter_roundtrip_restores_outputs(tmp_path):
    base = TwoLayer().double()
    fresh = copy.deepcopy(base)  # the same base weights, never adapted
    model = adapted(base)
    expected = model(X)
    save_adapter(model, tmp_path)
    load_adapter(fresh, tmp_path)
    assert torch.equal(fresh(X), expected)
    assert all(torch.equal(v, lora_state_dict(model)[k]) for k, v in lora_state_dict(fresh).items())


def test_after_load_adapter_trainable_flags_are_as_after_apply_lora(tmp_path):
    model = adapted()
    save_adapter(model, tmp_path)
    fresh = load_adapter(TwoLayer().double(), tmp_path)
    flags = {n: p.requires_grad for n, p in fresh.named_parameters()}
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    assert {n for n, f in flags.items() if f} == {f"{m}.adapters.default.lora_{w}" for m in ("encoder.0", "decoder") for w in "AB"}
    assert fresh.lora_configs == model.lora_configs


def test_load_adapter_into_a_model_that_already_has_lora(tmp_path):
    source = adapted()
    save_adapter(source, tmp_path)
    target = apply_lora(TwoLayer().double(), rank=2, alpha=4, targets=("encoder.0", "decoder"))
    load_adapter(target, tmp_path)
    assert all(torch.equal(v, lora_state_dict(source)[k]) for k, v in lora_state_dict(target).items())


def test_saved_adapter_has_peft_key_names_and_config_fields(tmp_path):
    model = apply_lora(GPT(GPTConfig(**TINY_GPT2)), rank=4, alpha=8, targets=PEFT_TARGETS)
    save_adapter(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    ours = read_safetensors_header(tmp_path / "adapter_model.safetensors")
    peft = read_safetensors_header(FIXTURE / "adapter" / "adapter_model.safetensors")
    assert ours.keys() == peft.keys()  # includes "__metadata__"
    assert ours["__metadata__"] == peft["__metadata__"] == {"format": "pt"}
    assert all(ours[k]["shape"] == peft[k]["shape"] and ours[k]["dtype"] == peft[k]["dtype"] for k in peft if k != "__metadata__")
    ours_cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    peft_cfg = json.loads((FIXTURE / "adapter" / "adapter_config.json").read_text())
    # PEFT keeps target_modules in a set, so the order it writes varies from run to run
    assert set(ours_cfg.pop("target_modules")) == set(peft_cfg.pop("target_modules"))
    assert ours_cfg == peft_cfg  # every other field and value: the fixture was made with these settings


def test_save_adapter_records_its_arguments(tmp_path):
    model = apply_lora(TwoLayer(), rank=2, alpha=3, dropout=0.1, targets="all-linear", use_rslora=True)
    save_adapter(model, tmp_path, base_model_name_or_path="two-layer", fan_in_fan_out=False)
    cfg = read_adapter_config(tmp_path)
    assert (cfg["r"], cfg["lora_alpha"], cfg["lora_dropout"], cfg["use_rslora"]) == (2, 3, 0.1, True)
    assert cfg["base_model_name_or_path"] == "two-layer" and cfg["fan_in_fan_out"] is False
    assert cfg["target_modules"] == ["0", "decoder"]  # "all-linear" resolved to layer names, as PEFT writes it


def test_peft_adapter_loads_and_gives_peft_logits():
    model = load_pretrained(FIXTURE / "base").eval()
    expected, _ = load_file(FIXTURE / "expected.safetensors")
    torch.testing.assert_close(model(expected["ids"])[0], expected["base_logits"], rtol=0, atol=1e-5)
    load_adapter(model, FIXTURE / "adapter")
    logits, _ = model(expected["ids"])
    assert (logits - expected["logits"]).abs().max() < 1e-5
    assert (logits - expected["base_logits"]).abs().max() > 1e-2  # the adapter changes the output


def test_peft_adapter_loads_into_same_shaped_model():
    model = load_adapter(GPT(GPTConfig(**TINY_GPT2)), FIXTURE / "adapter")
    tensors, _ = load_file(FIXTURE / "adapter" / "adapter_model.safetensors")
    assert len(list(lora_layers(model))) == 2 * 4
    for name, layer in lora_layers(model):
        assert torch.equal(layer.lora_A, tensors[f"base_model.model.{name}.lora_A.weight"])
        assert torch.equal(layer.lora_B, tensors[f"base_model.model.{name}.lora_B.weight"])
    assert (layer.rank, layer.alpha, layer.scaling) == (4, 8, 2.0)


# --- every failure leaves the model as it was ---

def test_missing_directory_raises_file_not_found(tmp_path):
    model = TwoLayer()
    before = snapshot(model)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_adapter(model, tmp_path / "nope")
    assert_unchanged(model, before)


@pytest.mark.parametrize("missing", ["adapter_config.json", "adapter_model.safetensors"])
def test_missing_file_raises_file_not_found(tmp_path, missing):
    save_adapter(adapted(), tmp_path)
    (tmp_path / missing).unlink()
    model = TwoLayer().double()
    before = snapshot(model)
    with pytest.raises(FileNotFoundError, match=missing):
        load_adapter(model, tmp_path)
    assert_unchanged(model, before)


def rewrite_config(directory, **changes):
    path = directory / "adapter_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


@pytest.mark.parametrize("changes, match", [
    (dict(r=3), r"'base_model.model.encoder.0.lora_A.weight' has shape \(2, 6\), but the model with this config needs \(3, 6\)"),
    (dict(target_modules=["decoder"]), "unexpected key 'base_model.model.encoder.0.lora_A.weight'"),
    (dict(target_modules=["encoder.0", "decoder", "missing"]), "'missing' matches no module"),
    (dict(r=0), "adapter_config.json: r=0"),  # the key as the file spells it
    (dict(lora_alpha=-1), "adapter_config.json: lora_alpha=-1"),
    (dict(target_modules=None), "adapter_config.json: target_modules=None"),
    (dict(peft_type="IA3"), "peft_type='IA3'"),
    (dict(use_dora=True), "key 'base_model.model.encoder.0.lora_magnitude_vector' is missing"),
    (dict(rank_pattern={"decoder": 8}), "rank=8 exceeds min"),
    (dict(rank_pattern={"nothing": 3}), "rank_pattern key 'nothing' matches none"),
    (dict(bias="all"), "bias='all'"),
    (dict(target_modules="^decoder$"), "unexpected key 'base_model.model.encoder.0.lora_A.weight'"),
    (dict(init_lora_weights="olora"), "init_lora_weights='olora'"),
    (dict(use_qalora=True), "use_qalora=True"),
    (dict(modules_to_save=["decoder"]), "modules_to_save="),
    (dict(layers_pattern=3), "layers_pattern=3"),
])
def test_bad_config_raises_and_leaves_model_unchanged(tmp_path, changes, match):
    save_adapter(adapted(), tmp_path)
    rewrite_config(tmp_path, **changes)
    model = TwoLayer().double()
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        load_adapter(model, tmp_path)
    assert_unchanged(model, before)


@pytest.mark.parametrize("other, match", [
    (dict(rank=4, alpha=4), "config has r=2"),
    (dict(targets=("decoder",)), "'encoder.0' has no LoRA"),
])
def test_config_for_another_rank_or_targets_raises_on_adapted_model(tmp_path, other, match):
    save_adapter(adapted(), tmp_path)
    model = apply_lora(TwoLayer().double(), **(dict(rank=2, alpha=4, targets=("encoder.0", "decoder")) | other))
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        load_adapter(model, tmp_path)
    assert_unchanged(model, before)


def test_loading_into_merged_model_raises(tmp_path):
    save_adapter(adapted(), tmp_path)
    model = merge_lora(adapted())
    before = snapshot(model)
    with pytest.raises(ValueError, match="unmerge_lora"):
        load_adapter(model, tmp_path)
    assert_unchanged(model, before)


def rewrite_tensors(directory, edit):
    path = directory / "adapter_model.safetensors"
    tensors, metadata = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata)


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.pop("base_model.model.decoder.lora_B.weight"), "'base_model.model.decoder.lora_B.weight' is missing"),
    (lambda t: t.update({"base_model.model.decoder.lora_C.weight": torch.zeros(1)}), "unexpected key 'base_model.model.decoder.lora_C"),
    (lambda t: t.update({"base_model.model.decoder.lora_B.weight": torch.zeros(5, 3)}), r"has shape \(5, 3\)"),
    (lambda t: t.update({"base_model.model.decoder.lora_B.weight": torch.full((5, 2), float("nan"))}), "not a finite"),
    (lambda t: t.update({"base_model.model.decoder.lora_B.weight": torch.zeros(5, 2, dtype=torch.int32)}), "not a finite"),
])
def test_mismatched_tensors_raise_naming_the_key(tmp_path, edit, match):
    save_adapter(adapted(), tmp_path)
    rewrite_tensors(tmp_path, edit)
    model = TwoLayer().double()
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        load_adapter(model, tmp_path)
    assert_unchanged(model, before)


@pytest.mark.parametrize("damage", ["truncate", "garbage_header", "empty"])
def test_truncated_or_corrupted_file_raises_and_leaves_model_unchanged(tmp_path, damage):
    save_adapter(adapted(), tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    raw = path.read_bytes()
    path.write_bytes({"truncate": raw[:-7], "garbage_header": raw[:8] + b"{not json" + raw[17:], "empty": b""}[damage])
    model = TwoLayer().double()
    before = snapshot(model)
    with pytest.raises(ValueError, match="adapter_model.safetensors"):
        load_adapter(model, tmp_path)
    assert_unchanged(model, before)


def test_corrupted_config_raises(tmp_path):
    save_adapter(adapted(), tmp_path)
    (tmp_path / "adapter_config.json").write_text('{"r": 2,')
    with pytest.raises(ValueError, match="not valid JSON"):
        read_adapter_config(tmp_path)


def test_peft_fixture_into_wrong_shaped_model_raises_and_leaves_it_unchanged():
    model = GPT(GPTConfig(**(TINY_GPT2 | dict(n_embd=16))))
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"'base_model.model.transformer.h.0.attn.c_attn.lora_A.weight' has shape \(4, 32\)"):
        load_adapter(model, FIXTURE / "adapter")
    assert_unchanged(model, before)


def test_save_without_lora_raises(tmp_path):
    with pytest.raises(ValueError, match="no LoRA layers"):
        save_adapter(TwoLayer(), tmp_path)
    assert not any(tmp_path.iterdir())


def test_saving_again_replaces_the_adapter_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "adapter"
    save_adapter(adapted(rank=2), target)
    save_adapter(adapted(rank=3, alpha=6), target)
    assert sorted(p.name for p in target.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert read_adapter_config(target)["r"] == 3


# --- a save never deletes, moves or mixes up what is already there ---

def tree(path):
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


@pytest.mark.parametrize("foreign", ["notes.txt", "scripts/run.sh", "empty_folder/"])
def test_saving_into_a_folder_with_other_files_is_refused_and_changes_nothing(tmp_path, foreign):
    target = tmp_path / "mine"
    path = target / foreign.rstrip("/")
    if foreign.endswith("/"):
        path.mkdir(parents=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("the user's own file")
    before = tree(tmp_path)
    with pytest.raises(ValueError, match=r"mine'.*not LoRA adapters.*nothing was changed"):
        save_adapter(adapted(), target)
    assert tree(tmp_path) == before


def test_saving_onto_a_regular_file_is_refused_and_the_file_stays(tmp_path):
    target = tmp_path / "adapter"
    target.write_text("not a folder")
    with pytest.raises(ValueError, match=r"adapter' is a file, not a folder"):
        save_adapter(adapted(), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"] and target.read_text() == "not a folder"


def test_saving_into_a_read_only_adapter_folder_raises_permission_error(tmp_path):
    target = tmp_path / "adapter"
    save_adapter(adapted(rank=2), target)
    before = tree(tmp_path)
    target.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="read-only"):
            save_adapter(adapted(rank=3, alpha=6), target)
    finally:
        target.chmod(0o755)
    assert tree(tmp_path) == before


def test_an_adapter_folder_with_a_readme_is_ours(tmp_path):
    # PEFT's save_pretrained writes a README.md beside the two files; saving over such a folder is fine
    target = tmp_path / "adapter"
    save_adapter(adapted(rank=2), target)
    (target / "README.md").write_text("model card")
    save_adapter(adapted(rank=3, alpha=6), target)
    assert (target / "README.md").read_text() == "model card" and read_adapter_config(target)["r"] == 3


def test_an_interrupted_write_leaves_the_previous_adapter(tmp_path, monkeypatch):
    target = tmp_path / "adapter"
    save_adapter(adapted(rank=2), target)
    before = tree(tmp_path)

    def failing(config, path):
        raise OSError("disk full")

    monkeypatch.setattr(lora.io.adapter_io, "write_adapter_config", failing)  # the weights are written by then
    with pytest.raises(OSError, match="disk full"):
        save_adapter(adapted(rank=3, alpha=6), target)
    assert tree(tmp_path) == before
