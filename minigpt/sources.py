"""A model and its tokenizer from anything a run writes, so that one command samples from all of them.

    a training checkpoint     ckpt.pt (or its folder), written by minigpt.train: config and tokenizer inside
    a fine-tune run folder    model.json (tokenizer, base, merged/ and adapter/ folders), written by the
                              fine-tune: its merged/ model when present, else its base plus adapter/
    a PEFT-format adapter     adapter_config.json + adapter_model.safetensors, on top of a base given
                              by the caller or named in the adapter's config (base_model_name_or_path)
    a GPT-2-layout folder     config.json + model.safetensors (minigpt.load_pretrained); GPT-2's BPE, or
                              bytes for a vocabulary of 256 (the tiny base)
    a GPT-2 name              gpt2, gpt2-medium, ... (cached or downloaded weights)

Everything read is checked by the loaders it goes through (checkpoint, safetensors, adapter config).
"""

import json
import pathlib

from lora.config import read_adapter_config
from lora.io.adapter_io import load_adapter
from minigpt.checkpoint import CKPT_NAME, load_checkpoint, read_checkpoint
from minigpt.model import GPT, GPTConfig
from minigpt.pretrained import GPT2_NAMES, load_pretrained
from minigpt.tokenizer import ByteTokenizer, get_tokenizer, tokenizer_from_dict

GPT2_VOCAB = 50257  # GPT-2's BPE: 50,000 merges, 256 bytes and <|endoftext|>
RUN_FILE = "model.json"  # in a fine-tune run folder: what rebuilds its model and tokenizer
KINDS = ("a training checkpoint (ckpt.pt)", f"a fine-tune run folder ({RUN_FILE})",
         "a PEFT adapter folder (adapter_config.json)", "a GPT-2 folder (config.json + model.safetensors)",
         f"a GPT-2 name ({', '.join(GPT2_NAMES)})")


def load_model(source, base=None, device="cpu"):
    """(model in eval mode on `device`, tokenizer) from `source`, any of the kinds in the module docstring.

    Args:
        source: a path (file or folder) or a GPT-2 name.
        base: for an adapter folder, its base (any other kind of source); default the adapter's own
            base_model_name_or_path. Ignored for other sources.
    Raises:
        FileNotFoundError: `source` does not exist and is not a GPT-2 name.
        ValueError: a folder that is none of the kinds, or whose files do not rebuild a model (the
            message names the path).
    """
    model, tokenizer = _load(source, base)
    return model.to(device).eval(), tokenizer


def _load(source, base):
    path = pathlib.Path(source).expanduser()
    if not path.exists():
        if str(source) in GPT2_NAMES:
            return load_pretrained(str(source)), get_tokenizer("gpt2")
        raise FileNotFoundError(f"{source}: no such file or folder; give one of: {'; '.join(KINDS)}")
    if path.is_file():
        return from_checkpoint(path)
    if (path / RUN_FILE).is_file():
        return from_run(path)
    if (path / "adapter_config.json").is_file():
        return from_adapter(path, base)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return from_gpt2_folder(path)
    if (path / CKPT_NAME).is_file():
        return from_checkpoint(path)
    raise ValueError(f"{path}: holds none of the files to sample from; give one of: {'; '.join(KINDS)}")


def from_checkpoint(path):
    """A training checkpoint that holds the whole model, its config and its tokenizer description."""
    data = read_checkpoint(path)
    if data["trainable_only"]:
        raise ValueError(f"{path}: holds only the trainable parameters; load its base model, then load_checkpoint")
    if not data["model_config"] or "tokenizer" not in data["extra"]:
        raise ValueError(f"{path}: no model config or tokenizer description to rebuild the model from")
    model = GPT(GPTConfig(**data["model_config"]))
    load_checkpoint(data, model)
    return model, tokenizer_from_dict(data["extra"]["tokenizer"])


def from_gpt2_folder(path, tokenizer=None):
    """A GPT-2-layout folder; the tokenizer is GPT-2's BPE, or bytes for a vocabulary of 256."""
    model = load_pretrained(path)
    if tokenizer is None:
        vocab = model.config.vocab_size
        if vocab == ByteTokenizer.vocab_size:
            tokenizer = ByteTokenizer()
        elif vocab == GPT2_VOCAB:
            tokenizer = get_tokenizer("gpt2")
        else:
            raise ValueError(f"{path}: a vocabulary of {vocab} tokens is neither bytes ({ByteTokenizer.vocab_size}) "
                             f"nor GPT-2's BPE ({GPT2_VOCAB}); sample from the run's training checkpoint instead")
    return model, tokenizer


def from_adapter(path, base=None, tokenizer=None):
    """An adapter folder on top of `base` (any other source; default the adapter's base_model_name_or_path)."""
    base = base if base is not None else read_adapter_config(path).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{path}: the adapter names no base model; pass its base (--base)")
    if pathlib.Path(base).expanduser().resolve() == path.resolve():
        raise ValueError(f"{path}: an adapter cannot be its own base")
    model, base_tokenizer = _load(base, None)
    return load_adapter(model, path), tokenizer or base_tokenizer


def from_run(path):
    """A fine-tune run folder: merged/ when present, else the base plus adapter/ (see run_description)."""
    where = path / RUN_FILE
    try:
        info = json.loads(where.read_text(encoding="utf-8"))
        tokenizer = tokenizer_from_dict(info["tokenizer"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{where}: not a run description ({type(e).__name__}: {e})") from None
    merged, adapter = (path / info[k] if isinstance(info.get(k), str) else None for k in ("merged", "adapter"))
    if merged is not None and (merged / "model.safetensors").is_file():
        return from_gpt2_folder(merged, tokenizer)
    if adapter is not None and (adapter / "adapter_config.json").is_file():
        return from_adapter(adapter, info.get("base"), tokenizer)
    raise ValueError(f"{path}: the run has neither its merged model ({info.get('merged')}/) nor an adapter "
                     f"({info.get('adapter')}/); was it interrupted? resume it, or sample from its ckpt.pt")


def run_description(tokenizer, base, adapter):
    """The content of a fine-tune run's model.json: its tokenizer, its base, its merged/ and adapter/ folders."""
    return {"tokenizer": tokenizer.to_dict(), "base": base, "merged": "merged", "adapter": "adapter" if adapter else None}

