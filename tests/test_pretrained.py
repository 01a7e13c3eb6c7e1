"""minigpt.pretrained: GPT-2 files in Hugging Face's layout load exactly, bad files are refused untouched.

The parity fixture tests/fixtures/hf_gpt2_tiny/ was written by transformers' own GPT2LMHeadModel
(tests/fixtures/make_hf_gpt2_fixture.py), together with its logits and greedy tokens.
"""

import json
import pathlib
import shutil

import pytest
import torch

from helpers import assert_unchanged, snapshot
from lora.io.safetensors_io import load_file, save_file
from minigpt import pretrained
from minigpt.model import GPT, GPTConfig
from minigpt.pretrained import load_pretrained, save_pretrained

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
TINY = dict(vocab_size=50, block_size=12, n_layer=2, n_head=2, n_embd=16)
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def randomized(model):
    """Every parameter random (LayerNorm and biases too), so a forgotten or misplaced tensor shows."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def write_gpt2_folder(folder, model, prefix="transformer.", mask_buffers=False, lm_head=False):
    """Write `model` in GPT-2's on-disk layout by hand: Conv1D weights (d_in, d_out), HF config keys."""
    c = model.config
    tensors = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        if name.endswith(CONV1D):
            t = t.t()  # nn.Linear (d_out, d_in) -> Conv1D (d_in, d_out)
        tensors[prefix + name.removeprefix("transformer.")] = t.contiguous()
    for i in range(c.n_layer * mask_buffers):  # the causal mask old HF files store as h.N.attn.bias
        tensors[f"{prefix}h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, c.block_size, c.block_size))
    if lm_head:
        tensors["lm_head.weight"] = model.lm_head.weight.detach().clone()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    config = dict(model_type="gpt2", vocab_size=c.vocab_size, n_ctx=c.block_size, n_embd=c.n_embd,
                  n_layer=c.n_layer, n_head=c.n_head, layer_norm_epsilon=1e-5, activation_function="gelu_new")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("layout", [dict(prefix="transformer."), dict(prefix="", mask_buffers=True, lm_head=True)])
def test_gpt2_layout_file_round_trips_to_identical_logits(tmp_path, layout):
    source = randomized(GPT(GPTConfig(**TINY)))
    loaded = load_pretrained(write_gpt2_folder(tmp_path / "m", source, **layout)).eval()
    idx = torch.randint(50, (2, 12))
    assert loaded.config == source.config
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert torch.equal(loaded(idx)[0], source(idx)[0])


def test_save_pretrained_writes_hf_layout_and_round_trips(tmp_path):
    source = randomized(GPT(GPTConfig(**TINY)))
    save_pretrained(source, tmp_path)
    tensors, metadata = load_file(tmp_path / "model.safetensors")
    config = json.loads((tmp_path / "config.json").read_text())
    assert metadata == {"format": "pt"}
    assert (config["model_type"], config["architectures"]) == ("gpt2", ["GPT2LMHeadModel"])
    assert all(k.startswith("transformer.") for k in tensors) and "lm_head.weight" not in tensors
    assert tensors["transformer.h.0.attn.c_attn.weight"].shape == (16, 48)  # Conv1D: (d_in, d_out)
    loaded = pretrained.load_pretrained(tmp_path).eval()
    idx = torch.randint(50, (2, 12))
    assert torch.equal(loaded(idx)[0], source(idx)[0])


def test_logits_and_greedy_tokens_equal_hugging_face_gpt2():
    expected, _ = load_file(FIXTURES / "hf_gpt2_tiny_outputs.safetensors")
    model = load_pretrained(str(FIXTURES / "hf_gpt2_tiny")).eval()
    ids, greedy = expected["input_ids"], expected["greedy"]
    with torch.no_grad():
        logits, _ = model(ids)
    assert (logits - expected["logits"]).abs().max().item() < 1e-5
    out = model.generate(ids, greedy.size(1) - ids.size(1), temperature=0)
    assert torch.equal(out, greedy)


@pytest.mark.parametrize("damage", ["truncate", "corrupt_header"])
def test_damaged_file_raises_value_error_and_leaves_model_untouched(tmp_path, damage):
    path = write_gpt2_folder(tmp_path, randomized(GPT(GPTConfig(**TINY)))) / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100] if damage == "truncate" else raw[:8] + b"#" + raw[9:])
    target = GPT(GPTConfig(**TINY))
    before = snapshot(target)
    with pytest.raises(ValueError, match=str(path)):
        pretrained.load_hf_weights(target, path)
    assert_unchanged(target, before)


def test_weights_of_another_config_raise_value_error_listing_keys_and_leave_model_untouched(tmp_path):
    path = write_gpt2_folder(tmp_path, GPT(GPTConfig(**{**TINY, "n_embd": 32, "n_layer": 3}))) / "model.safetensors"
    target = GPT(GPTConfig(**TINY))
    before = snapshot(target)
    with pytest.raises(ValueError) as e:
        pretrained.load_hf_weights(target, path)
    message = str(e.value)
    assert "unexpected [transformer.h.2." in message
    assert "mis-shaped [transformer.h.0.attn.c_attn.bias: file (96,) vs model (48,)" in message
    assert_unchanged(target, before)


def test_missing_key_and_untied_lm_head_are_named(tmp_path):
    source = GPT(GPTConfig(**TINY))
    path = write_gpt2_folder(tmp_path, source, lm_head=True) / "model.safetensors"
    tensors, meta = load_file(path)
    del tensors["transformer.ln_f.bias"]
    save_file(tensors, path, meta)
    with pytest.raises(ValueError, match=r"missing \[transformer.ln_f.bias\]"):
        pretrained.load_hf_weights(GPT(GPTConfig(**TINY)), path)
    tensors["transformer.ln_f.bias"] = torch.zeros(16)
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1
    save_file(tensors, path, meta)
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        pretrained.load_hf_weights(GPT(GPTConfig(**TINY)), path)


@pytest.mark.parametrize("change", [dict(layer_norm_epsilon=1e-6), dict(activation_function="relu"),
                                    dict(n_inner=100), dict(model_type="llama"), dict(n_embd=15)])
def test_config_our_gpt_cannot_reproduce_raises_value_error(tmp_path, change):
    folder = write_gpt2_folder(tmp_path, GPT(GPTConfig(**TINY)))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=next(iter(change))):
        pretrained.load_pretrained(folder)


def test_unknown_name_raises_value_error_listing_the_names():
    with pytest.raises(ValueError, match="gpt2-medium"):
        load_pretrained("gpt3")


def test_known_name_loads_from_the_cache_without_downloading(tmp_path):
    shutil.copytree(FIXTURES / "hf_gpt2_tiny", tmp_path / "gpt2")
    model = pretrained.load_pretrained("gpt2", cache_dir=tmp_path)
    assert model.config.n_embd == 32


def test_download_fetches_both_files_and_checks_the_pinned_sha256(tmp_path, monkeypatch):
    hub = tmp_path / "hub" / "gpt2-medium" / "main"
    shutil.copytree(FIXTURES / "hf_gpt2_tiny", hub)
    monkeypatch.setattr(pretrained, "HUB_URL", (tmp_path / "hub").as_uri() + "/{name}/{revision}/{file}")
    monkeypatch.setattr(pretrained, "PINNED", {"gpt2-medium": ("main", "0" * 64)})
    with pytest.raises(ValueError, match="sha256 mismatch"):
        pretrained.load_pretrained("gpt2-medium", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "gpt2-medium" / "model.safetensors").exists()
    monkeypatch.setattr(pretrained, "PINNED", {})
    model = pretrained.load_pretrained("gpt2-medium", cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache" / "gpt2-medium").iterdir()) == ["config.json",
                                                                                        "model.safetensors"]
    assert model.config.vocab_size == 100


def test_save_pretrained_refuses_models_gpt2_layout_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="bias=False"):
        save_pretrained(GPT(GPTConfig(**TINY, bias=False)), tmp_path)
    untied = GPT(GPTConfig(**TINY))
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone())
    with pytest.raises(ValueError, match="not tied"):
        save_pretrained(untied, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("change", [dict(n_layer=2.0), dict(n_embd="16"), dict(n_head=True), dict(vocab_size=50.5),
                                    dict(n_ctx=12.0), dict(scale_attn_weights=1), dict(layer_norm_epsilon="1e-05"),
                                    dict(add_cross_attention=0), dict(n_inner=64.0)])
def test_config_types_are_strict_not_coerced(tmp_path, change):
    folder = write_gpt2_folder(tmp_path, GPT(GPTConfig(**TINY)))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    field = next(iter(change)).replace("n_ctx", "n_positions")
    with pytest.raises(ValueError, match=rf"config.json: .*{field}={change[next(iter(change))]!r}"):
        pretrained.load_pretrained(folder)


@pytest.mark.parametrize("change", [dict(n_layer=10**9), dict(n_embd=2**20, n_head=2), dict(vocab_size=10**9),
                                    dict(n_ctx=10**9)])
def test_config_sizes_are_checked_against_the_file_before_the_model_is_built(tmp_path, monkeypatch, change):
    folder = write_gpt2_folder(tmp_path, GPT(GPTConfig(**TINY)))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the config was checked against the file")
    monkeypatch.setattr(pretrained, "GPT", no_model)
    with pytest.raises(ValueError, match="model.safetensors does not fit its config"):
        pretrained.load_pretrained(folder)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weight_is_refused_naming_tensor_and_file(tmp_path, value):
    path = write_gpt2_folder(tmp_path, randomized(GPT(GPTConfig(**TINY)))) / "model.safetensors"
    tensors, meta = load_file(path)
    tensors["transformer.h.1.mlp.c_fc.weight"][3, 5] = value
    save_file(tensors, path, meta)
    target = GPT(GPTConfig(**TINY))
    before = snapshot(target)
    with pytest.raises(ValueError, match=rf"{path}: tensor 'transformer.h.1.mlp.c_fc.weight' has 1 non-finite"):
        pretrained.load_hf_weights(target, path)
    assert_unchanged(target, before)
    with pytest.raises(ValueError, match="non-finite"):
        pretrained.load_pretrained(tmp_path)
