"""GPT-2 weights in Hugging Face's layout: load them into a GPT, and save a GPT so that HF can load it.

A pretrained model is a folder with two files, as Hugging Face writes them:
    config.json        GPT2Config fields: n_layer, n_head, n_embd, vocab_size, n_positions, ...
    model.safetensors  the weights, read with lora.io.safetensors_io (no pickle)

HF's GPT-2 differs from our GPT in three ways, which is all this module translates (as nanoGPT's
from_pretrained does):
    1. its attention and MLP projections are Conv1D layers, whose weight is stored (d_in, d_out), the
       transpose of nn.Linear's (d_out, d_in): c_attn, attn.c_proj, c_fc and mlp.c_proj are transposed;
    2. the original files name keys without the "transformer." prefix ("h.0.ln_1.weight") and include the
       causal-mask buffers "h.N.attn.bias" / "h.N.attn.masked_bias", which are not parameters (we use
       is_causal=True) and are skipped;
    3. lm_head.weight is usually absent because it is tied to wte; when present it must equal wte.
Every name and shape is checked before the model is touched, so a bad file leaves the model as it was.

The names gpt2, gpt2-medium, gpt2-large and gpt2-xl are downloaded once from
https://huggingface.co/openai-community/<name> into cache_dir()/<name>/. Checksums: for gpt2 the weights
are pinned to revision 607a30d7 and checked against their published sha256 (the Git LFS object id of
model.safetensors, 548,105,171 bytes). We found no published hash we could confirm for the three larger
models, so those come from the main branch and are checked by their safetensors header and the name and
shape of every tensor instead, which catches a truncated or wrong file but not a silently altered one.
"""

import json
import os
import pathlib

import torch

from lora.checks import check_int
from lora.io.files import staged_writes
from lora.io.safetensors_io import check_finite, header_shapes, load_file, serialize
from minigpt.download import cache_dir as default_cache_dir
from minigpt.download import download
from minigpt.model import GPT, GPTConfig

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
HUB_URL = "https://huggingface.co/openai-community/{name}/resolve/{revision}/{file}"
# name -> (revision, sha256 of model.safetensors); names not listed use "main" and no checksum (see above)
PINNED = {"gpt2": ("607a30d783dfa663caf39e06633721c8d4cfcd7e",
                   "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707")}
CONV1D_SUFFIXES = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
MASK_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # ".c_attn.bias" does not match: "_" precedes "attn"
# GPT2Config's defaults, used for fields a config.json leaves out (as Hugging Face does)
HF_DEFAULTS = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
                   activation_function="gelu_new", layer_norm_epsilon=1e-5, scale_attn_weights=True,
                   scale_attn_by_inverse_layer_idx=False, add_cross_attention=False, model_type="gpt2")


def config_from_hf(hf, dropout=0.0):
    """A GPTConfig from a GPT-2 config.json dict; ValueError for a model our GPT cannot reproduce exactly.

    The file's dropout rates (resid/embd/attn_pdrop, 0.1 in GPT-2) are ignored: `dropout` is used instead,
    0 by default because fine-tuning usually runs without it.
    """
    c = {**HF_DEFAULTS, **hf}
    block_size = hf.get("n_positions", hf.get("n_ctx", HF_DEFAULTS["n_positions"]))
    for name, value in (("vocab_size", c["vocab_size"]), ("n_positions", block_size), ("n_embd", c["n_embd"]),
                        ("n_layer", c["n_layer"]), ("n_head", c["n_head"])):
        check_int(name, value)  # 12.0, "12" or true are refused, not coerced
    exact = dict(model_type="gpt2", layer_norm_epsilon=1e-5, scale_attn_weights=True,
                 scale_attn_by_inverse_layer_idx=False, add_cross_attention=False)
    # compared with their types: 1 == True and 1e-5 == 1e-5 as a str differ only in type
    bad = [f"{k}={c[k]!r} (need {v!r})" for k, v in exact.items() if type(c[k]) is not type(v) or c[k] != v]
    if c["activation_function"] not in ("gelu_new", "gelu_pytorch_tanh"):  # both are GELU's tanh approximation
        bad.append(f"activation_function={c['activation_function']!r} (need 'gelu_new')")
    if c["n_inner"] is not None and (type(c["n_inner"]) is not int or c["n_inner"] != 4 * c["n_embd"]):
        bad.append(f"n_inner={c['n_inner']!r} (need None or 4 * n_embd = {4 * c['n_embd']})")
    if bad:
        raise ValueError("GPT-2 config not supported by minigpt's GPT: " + ", ".join(bad))
    return GPTConfig(vocab_size=c["vocab_size"], block_size=block_size, n_layer=c["n_layer"], n_head=c["n_head"],
                     n_embd=c["n_embd"], dropout=dropout, bias=True)


def config_to_hf(config):
    """The config.json dict of Hugging Face's GPT2LMHeadModel for a GPTConfig (with biases)."""
    hf = dict(architectures=["GPT2LMHeadModel"], model_type="gpt2", vocab_size=config.vocab_size,
              n_positions=config.block_size, n_ctx=config.block_size, n_embd=config.n_embd,
              n_layer=config.n_layer, n_head=config.n_head, n_inner=None, activation_function="gelu_new",
              resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
              layer_norm_epsilon=1e-5, initializer_range=0.02, scale_attn_weights=True,
              tie_word_embeddings=True, use_cache=True)
    # GPT-2's <|endoftext|> id 50256 (GPT2Config's default) only exists in its own vocabulary
    eot = 50256 if config.vocab_size > 50256 else None
    hf.update(bos_token_id=eot, eos_token_id=eot)
    return hf


def _from_hf_layout(tensors):
    """HF GPT-2 tensors -> ({our name: tensor in nn.Linear layout}, lm_head or None, duplicate names)."""
    state, lm_head, duplicates = {}, None, []
    for key, t in tensors.items():
        if key == "lm_head.weight":
            lm_head = t
            continue
        name = key if key.startswith("transformer.") else "transformer." + key
        if name.endswith(MASK_BUFFER_SUFFIXES):
            continue
        if name.endswith(CONV1D_SUFFIXES) and t.dim() == 2:
            t = t.t()  # Conv1D (d_in, d_out) -> nn.Linear (d_out, d_in)
        if name in state:
            duplicates.append(key)
        state[name] = t
    return state, lm_head, duplicates


def _listing(items, limit=8):
    items = list(items)
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return "[" + ", ".join(items[:limit]) + more + "]"


def _check_state(model, state, lm_head, duplicates, source):
    """Raise one ValueError naming every missing, unexpected, mis-shaped or non-float tensor."""
    expected = {k: v.shape for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied: stored once
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected)) + [f"{d} (twice)" for d in duplicates]
    misshaped = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k])}"
                 for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k]]
    not_float = [f"{k}: {t.dtype}" for k, t in sorted(state.items()) if not t.is_floating_point()]
    problems = [f"{label} {_listing(items)}" for label, items in
                (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped),
                 ("not floating point", not_float)) if items]
    if not problems and lm_head is not None:
        wte = state["transformer.wte.weight"]
        if lm_head.shape != wte.shape or not torch.equal(lm_head, wte):
            problems.append("lm_head.weight differs from transformer.wte.weight (an untied output head; "
                            "minigpt's GPT ties them, as GPT-2 does)")
    if problems:
        raise ValueError(f"{source} does not fit the model ({model.config}): " + "; ".join(problems))


def load_hf_weights(model, path):
    """Copy the weights of a HF GPT-2 model.safetensors into `model`, all checked before any is copied.

    Raises:
        ValueError: truncated or corrupted file, any tensor missing, unexpected, mis-shaped or of a
            non-float dtype (the message lists them all), or a tensor holding NaN or inf (named with
            the file); `model` is unchanged.
    """
    tensors, _ = load_file(path)
    state, lm_head, duplicates = _from_hf_layout(tensors)
    _check_state(model, state, lm_head, duplicates, path)
    check_finite(tensors, path)
    params = model.state_dict()
    with torch.no_grad():
        for name, t in state.items():
            params[name].copy_(t)  # casts to the model's dtype and device
    return model


def check_config_fits_file(config, path):
    """Compare a config's sizes with the shapes in a weights file's header, before any model is built.

    A config.json that asks for huge sizes would otherwise allocate the model (or build a million
    blocks) before the weights file gets a say. The embedding tables fix vocab_size, block_size and
    n_embd, and the "h.N." keys fix n_layer, so a model that passes is about as large as the file.

    Raises:
        ValueError: naming the config field, its value and what the file holds.
    """
    shapes = {k.removeprefix("transformer."): shape for k, (_, shape) in header_shapes(path).items()}
    problems = []
    for key, want in (("wte.weight", ("vocab_size", "n_embd")), ("wpe.weight", ("block_size", "n_embd"))):
        if key not in shapes:
            problems.append(f"the file has no {key}")
        elif list(shapes[key]) != [getattr(config, f) for f in want]:
            problems.append(f"{key} is {shapes[key]} in the file, but the config's ({', '.join(want)}) are "
                            f"{[getattr(config, f) for f in want]}")
    layers = {k.split(".")[1] for k in shapes if k.startswith("h.")}
    if len(layers) != config.n_layer or layers != {str(i) for i in range(len(layers))}:
        problems.append(f"the file holds {len(layers)} blocks (h.N.*), but the config has n_layer={config.n_layer}")
    if problems:
        raise ValueError(f"{path} does not fit its config: " + "; ".join(problems))


def _read_config(path):
    try:
        hf = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(hf, dict):
        raise ValueError(f"{path} holds a {type(hf).__name__}, expected a JSON object")
    return hf


def download_pretrained(name, cache_dir=None):
    """Download config.json and model.safetensors of a GPT-2 size into <cache>/<name>/ once; return the folder."""
    if name not in GPT2_NAMES:
        raise ValueError(f"unknown pretrained model {name!r}; choose one of {list(GPT2_NAMES)} or a folder")
    folder = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = folder / name
    revision, sha256 = PINNED.get(name, ("main", None))
    for fname, digest in (("config.json", None), ("model.safetensors", sha256)):
        if not (folder / fname).is_file():  # each file is written atomically: present means complete
            url = HUB_URL.format(name=name, revision=revision, file=fname)
            download(url, folder / fname, sha256=digest, desc=f"{name}/{fname}")
    return folder


def load_pretrained(name_or_dir, cache_dir=None, dropout=0.0):
    """A GPT with pretrained GPT-2 weights, from a folder or one of the names in GPT2_NAMES.

    A str equal to a name is downloaded (once, into `cache_dir` or cache_dir()); anything else is a folder
    holding config.json and model.safetensors, read offline. The model is built on the meta device (no
    wasted random init: every parameter is then read from the file) and returned in training mode.

    Args:
        name_or_dir: "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", or a folder path.
        cache_dir: folder for downloads (default $MINIGPT_CACHE_DIR or ~/.cache/minigpt).
        dropout: the GPTConfig dropout (the file's pdrop values are ignored).
    Returns:
        GPT on the CPU in float32.
    Raises:
        ValueError: unknown name, unsupported config (sizes that are not integers included), a config
            whose sizes disagree with the weights file's header, or weights that do not fit it or hold
            NaN or inf (see load_hf_weights).
        FileNotFoundError: the folder lacks config.json or model.safetensors.
        minigpt.download.DownloadError: a download failed.
    """
    if isinstance(name_or_dir, str) and name_or_dir in GPT2_NAMES:
        folder = download_pretrained(name_or_dir, cache_dir)
    else:
        folder = pathlib.Path(name_or_dir).expanduser()
        if not folder.is_dir():
            raise ValueError(f"{str(name_or_dir)!r} is neither a known pretrained name {list(GPT2_NAMES)} "
                             "nor a folder holding config.json and model.safetensors")
    for fname in ("config.json", "model.safetensors"):
        if not (folder / fname).is_file():
            raise FileNotFoundError(f"{folder} has no {fname}; a pretrained folder needs config.json and model.safetensors")
    try:
        config = config_from_hf(_read_config(folder / "config.json"), dropout=dropout)
    except ValueError as e:
        raise ValueError(f"{folder / 'config.json'}: {e}") from None
    check_config_fits_file(config, folder / "model.safetensors")  # before any allocation
    with torch.device("meta"):
        model = GPT(config)
    assert not list(model.buffers()), "buffers would stay uninitialised after to_empty"
    model.to_empty(device="cpu")  # allocate storage; every parameter is overwritten below
    model.lm_head.weight = model.transformer.wte.weight  # to_empty gives each module its own tensor: re-tie
    return load_hf_weights(model, folder / "model.safetensors")


def _hf_state(model):
    """Our state dict -> HF GPT-2 tensors: "transformer." keys, Conv1D weights transposed, no lm_head."""
    if not isinstance(model, GPT):
        raise ValueError(f"save_pretrained needs a minigpt GPT, got {type(model).__name__}")
    config = model.config
    if not config.bias:
        raise ValueError("GPT-2's layout has biases everywhere; a GPTConfig(bias=False) model cannot be saved in it")
    if model.lm_head.weight is not model.transformer.wte.weight:
        raise ValueError("lm_head.weight is not tied to transformer.wte.weight; GPT-2's layout stores one matrix")
    with torch.device("meta"):
        expected = {k: v.shape for k, v in GPT(config).state_dict().items()}
    state = model.state_dict()
    if {k: v.shape for k, v in state.items()} != expected:  # e.g. LoRA layers injected: merge them first
        extra = sorted(set(state) - set(expected))
        raise ValueError(f"the model's parameters are not a plain GPT's (extra {_listing(extra)}); "
                         "merge or remove adapters before saving in GPT-2's layout")
    return {k: (v.t() if k.endswith(CONV1D_SUFFIXES) else v).detach().cpu().contiguous()
            for k, v in state.items() if k != "lm_head.weight"}


def save_pretrained(model, directory):
    """Write `model` as Hugging Face's GPT2LMHeadModel would: config.json and model.safetensors, atomically.

    The folder round-trips through load_pretrained and loads into transformers' GPT2LMHeadModel. The
    tensors keep the model's dtype; dropout is written as resid/embd/attn_pdrop.

    Raises:
        ValueError: not a plain GPT with biases and a tied head (see _hf_state).
    """
    tensors = _hf_state(model)
    directory = pathlib.Path(directory).expanduser()
    hf = config_to_hf(model.config)
    hf["dtype"] = str(model.transformer.wte.weight.dtype).removeprefix("torch.")  # "torch_dtype" before transformers 4.56
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{os.fspath(directory)!r} is a file, not a folder; nothing was written")
    chunks = serialize(tensors, metadata={"format": "pt"})  # HF checks format == "pt"
    with staged_writes() as stage:  # the two files are renamed into place together
        with open(stage.file(directory / "model.safetensors"), "wb") as f:
            f.writelines(chunks)
        with open(stage.file(directory / "config.json"), "w") as f:
            json.dump(hf, f, indent=2)
            f.write("\n")
    return directory
