"""minigpt.sources: every kind of folder a run writes rebuilds the same model and the right tokenizer."""

import json
import shutil

import pytest
import torch

from helpers import tiny_gpt
from lora import apply_lora, save_adapter
from minigpt import sample as sample_cli
from minigpt.checkpoint import save_checkpoint
from minigpt.pretrained import save_pretrained
from minigpt.sources import RUN_FILE, load_model, run_description
from minigpt.tokenizer import ByteTokenizer

IDS = torch.tensor([list(b"to be or not to b")[:16]])  # (1, 16) byte ids


def _logits(model):
    with torch.no_grad():
        return model.eval()(IDS)[0]


def _lora(base_seed=0):
    """A byte-level LoRA model whose B is nonzero, so the adapter changes the output."""
    model = apply_lora(tiny_gpt(base_seed, vocab_size=256), rank=2, alpha=4.0, targets="all-linear")
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model


@pytest.fixture
def byte_base(tmp_path):
    """A GPT-2-layout folder of a byte-level model (vocabulary 256, as the tiny base)."""
    model = tiny_gpt(0, vocab_size=256)
    save_pretrained(model, tmp_path / "base")
    return tmp_path / "base", model


def test_training_checkpoint_rebuilds_model_and_tokenizer(tmp_path):
    model = tiny_gpt(3, vocab_size=256)
    save_checkpoint(tmp_path / "run", model, extra={"tokenizer": ByteTokenizer().to_dict()})
    for source in (tmp_path / "run", tmp_path / "run" / "ckpt.pt"):
        loaded, tok = load_model(source)
        assert tok.name == "byte" and torch.equal(_logits(loaded), _logits(model))


def test_gpt2_folder_of_256_tokens_uses_bytes(byte_base):
    path, model = byte_base
    loaded, tok = load_model(path)
    assert tok.name == "byte" and torch.equal(_logits(loaded), _logits(model))


def test_gpt2_folder_of_another_vocabulary_is_refused_by_path(tmp_path):
    save_pretrained(tiny_gpt(0), tmp_path / "v64")  # the test preset's 64 tokens: no tokenizer known
    with pytest.raises(ValueError, match="64 tokens") as err:
        load_model(tmp_path / "v64")
    assert str(tmp_path / "v64") in str(err.value)


def test_adapter_loads_on_its_named_base_or_the_given_one(byte_base, tmp_path):
    base_path, base = byte_base
    lora = _lora()
    assert not torch.equal(_logits(lora), _logits(base))  # the adapter matters
    save_adapter(lora, tmp_path / "adapter", base_model_name_or_path=str(base_path))
    named, tok = load_model(tmp_path / "adapter")
    assert tok.name == "byte" and torch.equal(_logits(named), _logits(lora))
    moved = shutil.copytree(base_path, tmp_path / "moved")
    given, _ = load_model(tmp_path / "adapter", base=moved)
    assert torch.equal(_logits(given), _logits(lora))


def test_adapter_without_a_base_asks_for_one(tmp_path):
    save_adapter(_lora(), tmp_path / "adapter")
    with pytest.raises(ValueError, match="--base"):
        load_model(tmp_path / "adapter")


def test_run_folder_uses_merged_then_base_plus_adapter(byte_base, tmp_path):
    base_path, _ = byte_base
    lora, run = _lora(), tmp_path / "finetune-lora"
    save_adapter(lora, run / "adapter", base_model_name_or_path=str(base_path))
    (run / RUN_FILE).write_text(json.dumps(run_description(ByteTokenizer(), str(base_path), adapter=True)))
    other = tiny_gpt(5, vocab_size=256)  # a merged/ that differs from base + adapter shows which one is read
    save_pretrained(other, run / "merged")
    merged, tok = load_model(run)
    assert tok.name == "byte" and torch.equal(_logits(merged), _logits(other))
    shutil.rmtree(run / "merged")
    unmerged, _ = load_model(run)
    assert torch.equal(_logits(unmerged), _logits(lora))
    shutil.rmtree(run / "adapter")
    with pytest.raises(ValueError, match="neither its merged model"):
        load_model(run)


def test_folders_of_nothing_are_refused_by_path(tmp_path):
    with pytest.raises(ValueError, match="none of the files") as err:
        load_model(tmp_path)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_model(tmp_path / "absent")
    (tmp_path / RUN_FILE).write_text("{")
    with pytest.raises(ValueError, match="not a run description"):
        load_model(tmp_path)


def test_sample_command_takes_an_adapter_and_its_base(byte_base, tmp_path, capsys):
    base_path, _ = byte_base
    save_adapter(_lora(), tmp_path / "adapter")
    texts = sample_cli.main([str(tmp_path / "adapter"), "--base", str(base_path), "--prompt", "to be",
                             "--max-new-tokens", "5", "--device", "cpu"])
    assert texts[0].startswith("to be") and capsys.readouterr().out.startswith("to be")
    with pytest.raises(SystemExit) as exit_:
        sample_cli.main([str(tmp_path / "adapter"), "--device", "cpu"])
    assert exit_.value.code == 2 and "--base" in capsys.readouterr().err
