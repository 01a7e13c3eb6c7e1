"""Saving and loading LoRA adapters in PEFT's file layout, so adapters move both ways between this
library and PEFT on Hugging Face's GPT-2.

    directory/
        adapter_config.json        PEFT's LoraConfig: r, lora_alpha, lora_dropout, target_modules, ...
        adapter_model.safetensors  base_model.model.<module path>.lora_A.weight   (r, d_in)
                                   base_model.model.<module path>.lora_B.weight   (d_out, r)

"base_model.model." is where PEFT's wrappers put the original model; PEFT names the tensors
`lora_A.default.weight` in memory and drops the adapter name ("default") in the file. Our lora_A /
lora_B are raw Parameters with nn.Linear's (d_out, d_in) layout, exactly PEFT's lora_A / lora_B
nn.Linear weights, so the tensors are written as they are.

Shape legend: r rank, d_in / d_out the adapted layer's input / output sizes.
"""

import json
import os

import torch

from lora.files import atomic_write
from lora.inject import apply_lora, lora_layers, mark_only_lora_trainable, plan_lora
from lora.safetensors_io import load_file, save_file
from lora.targets import ALL_LINEAR, name_matches

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_PREFIX = "base_model.model."

# Every field PEFT 0.21.2 writes for a LoraConfig, at its default value (compare
# tests/fixtures/peft_gpt2_tiny/adapter/adapter_config.json, written by PEFT itself).
_PEFT_DEFAULTS = {
    "alora_invocation_tokens": None, "alpha_pattern": {}, "arrow_config": None, "auto_mapping": None,
    "base_model_name_or_path": None, "bias": "none", "corda_config": None, "ensure_weight_tying": False,
    "eva_config": None, "exclude_modules": None, "fan_in_fan_out": False, "inference_mode": True,
    "init_lora_weights": True, "kasa_config": None, "layer_replication": None, "layers_pattern": None,
    "layers_to_transform": None, "loftq_config": {}, "lora_alpha": 8, "lora_bias": False, "lora_dropout": 0.0,
    "lora_ga_config": None, "megatron_config": None, "megatron_core": "megatron.core", "modules_to_save": None,
    "monteclora_config": None, "peft_type": "LORA", "peft_version": "0.21.2", "qalora_group_size": 16, "r": 8,
    "rank_pattern": {}, "revision": None, "target_modules": None, "target_parameters": None,
    "task_type": "CAUSAL_LM", "trainable_token_indices": None, "use_bdlora": None, "use_dora": False,
    "use_qalora": False, "use_rslora": False, "velora_config": None,
}
# Fields that do not change what a loaded adapter computes. Any other field must be at its default
# (or empty): a value there asks for a PEFT feature this library does not implement (DoRA, per-layer
# ranks, extra trained modules, ...), and loading refuses it instead of silently computing something else.
_IGNORED = {"auto_mapping", "base_model_name_or_path", "corda_config", "eva_config", "fan_in_fan_out",
            "inference_mode", "init_lora_weights", "loftq_config", "lora_ga_config", "peft_version", "revision",
            "task_type"}
_READ = {"peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora", "bias"}


def lora_state_dict(model):
    """Only the LoRA tensors of `model`, keyed as in model.state_dict() ("<module path>.lora_A" / ".lora_B").

    LoRA layers are found by type (LoRALinear), not by matching parameter names.
    """
    out = {}
    for name, layer in lora_layers(model):
        out[f"{name}.lora_A"] = layer.lora_A.detach()
        out[f"{name}.lora_B"] = layer.lora_B.detach()
    return out


def save_adapter(model, directory, base_model_name_or_path=None, fan_in_fan_out=True):
    """Write adapter_model.safetensors, then adapter_config.json, each atomically, into `directory`.

    The config goes last, so a directory with a config always has the matching tensors.

    Args:
        model: a model with LoRA layers that all share one rank, alpha and rsLoRA setting.
        directory: created if missing; existing adapter files are replaced.
        base_model_name_or_path: recorded for PEFT (e.g. "gpt2"); PEFT uses it to find the base model.
        fan_in_fan_out: the flag PEFT expects for a base stored as (d_in, d_out) matrices, as Hugging
            Face's GPT-2 stores them (Conv1D layers); True by default, as PEFT writes it for GPT-2. It
            does not change the tensors: lora_A is (r, d_in) and lora_B (d_out, r) either way, and only
            PEFT's merge reads it. Pass False for a base made of nn.Linear layers in PEFT.
    Returns:
        the directory, as given.
    Raises:
        ValueError: no LoRA layers, or layers with different rank/alpha/rsLoRA.
    """
    layers = list(lora_layers(model))
    if not layers:
        raise ValueError(f"{type(model).__name__} has no LoRA layers to save; call apply_lora first")
    settings = {(layer.rank, layer.alpha, layer.use_rslora) for _, layer in layers}
    if len(settings) > 1:
        raise ValueError(f"LoRA layers disagree on (rank, alpha, use_rslora): {sorted(settings)}; "
                         "one adapter file holds a single setting")
    (rank, alpha, use_rslora), = settings
    recorded = getattr(model, "lora_config", None) or {}
    targets = recorded.get("targets", [ALL_LINEAR])
    if targets == [ALL_LINEAR]:  # PEFT writes the layer names "all-linear" resolved to, not the keyword
        targets = sorted({name.rsplit(".", 1)[-1] for name, _ in layers})
    dropout = getattr(layers[0][1].dropout, "p", 0.0)
    config = dict(_PEFT_DEFAULTS, r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                  use_rslora=use_rslora, fan_in_fan_out=bool(fan_in_fan_out),
                  base_model_name_or_path=base_model_name_or_path)
    tensors = {}
    for name, layer in layers:
        tensors[_peft_key(name, "lora_A")] = layer.lora_A.detach()
        tensors[_peft_key(name, "lora_B")] = layer.lora_B.detach()
    os.makedirs(directory, exist_ok=True)
    save_file(tensors, os.path.join(directory, WEIGHTS_NAME), metadata={"format": "pt"})  # PEFT's metadata
    with atomic_write(os.path.join(directory, CONFIG_NAME), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    return directory


def read_adapter_config(directory):
    """Read and check `directory`/adapter_config.json; return it as a dict.

    Raises:
        FileNotFoundError: no such directory or file.
        ValueError: not JSON, not a LoRA config, or a PEFT feature this library does not implement.
    """
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"adapter directory {os.fspath(directory)!r} does not exist")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing; an adapter directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        got = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{path}: peft_type={got!r}; only 'LORA' adapters can be loaded")
    for field in ("r", "lora_alpha", "target_modules"):
        if field not in config:
            raise ValueError(f"{path}: required field {field!r} is missing")
    if config.get("bias", "none") != "none":
        raise ValueError(f"{path}: bias={config['bias']!r}; only 'none' is supported (biases stay frozen)")
    for field, value in sorted(config.items()):
        if field in _IGNORED or field in _READ or not value or value == _PEFT_DEFAULTS.get(field):
            continue
        raise ValueError(f"{path}: {field}={value!r} asks for a PEFT feature this library does not implement")
    targets = config["target_modules"]
    if isinstance(targets, str) and targets != ALL_LINEAR:
        raise ValueError(f"{path}: target_modules={targets!r} is a regular expression; give a list of names")
    return config


def load_adapter(model, directory):
    """Load a PEFT-format LoRA adapter into `model`, applying LoRA first if the model has none.

    Everything is checked before anything changes: the config against the model (targets exist,
    and an existing LoRA has the same r, lora_alpha, use_rslora and targets), then every tensor key
    and shape against the model and the config. Afterwards the LoRA parameters are trainable and
    all others frozen, as after apply_lora. fan_in_fan_out is ignored: it never changes the tensors.

    Returns:
        the model.
    Raises:
        FileNotFoundError: the directory or one of its two files is missing.
        ValueError: a bad or unsupported config, a truncated or corrupted tensor file, or a key or
            shape that does not fit (the message names the first offending key). The model is
            left as it was.
    """
    config = read_adapter_config(directory)
    weights = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{weights} is missing; an adapter directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    tensors, _ = load_file(weights)
    where = os.path.join(directory, CONFIG_NAME)
    rank, alpha = config["r"], config["lora_alpha"]
    dropout, use_rslora = config.get("lora_dropout", 0.0), config.get("use_rslora", False)
    targets = config["target_modules"]
    targets = [targets] if isinstance(targets, str) else targets
    existing = dict(lora_layers(model))
    try:
        if existing:
            sizes = _check_existing(model, existing, rank, alpha, use_rslora, targets)
        else:
            sizes = {n: (m.in_features, m.out_features) for n, m in plan_lora(model, rank, alpha, dropout, targets, use_rslora)}
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    _check_tensors(tensors, sizes, rank, weights)
    if not existing:
        apply_lora(model, rank, alpha, dropout, targets, use_rslora)
    with torch.no_grad():
        for name, layer in lora_layers(model):
            layer.lora_A.copy_(tensors[_peft_key(name, "lora_A")])
            layer.lora_B.copy_(tensors[_peft_key(name, "lora_B")])
    mark_only_lora_trainable(model)
    return model


def _peft_key(name, which):
    return f"{_PREFIX}{name}.{which}.weight"


def _check_existing(model, layers, rank, alpha, use_rslora, targets):
    """Return {name: (d_in, d_out)} of the model's LoRA layers after checking they match the config."""
    for name, layer in layers.items():
        if layer.merged:
            raise ValueError(f"{name!r} is merged; call unmerge_lora(model) before loading new weights")
        if (layer.rank, layer.alpha, layer.use_rslora) != (rank, alpha, use_rslora):
            raise ValueError(f"config has r={rank}, lora_alpha={alpha}, use_rslora={use_rslora} but the model's "
                             f"{name!r} has rank={layer.rank}, alpha={layer.alpha}, use_rslora={layer.use_rslora}")
    if targets != [ALL_LINEAR]:  # for "all-linear" the key check below compares the layer sets
        selected = {n for n, _ in model.named_modules() if n and any(name_matches(n, t) for t in targets)}
        if selected != set(layers):
            diff = sorted(selected ^ set(layers))[0]
            has = "has LoRA" if diff in layers else "has no LoRA"
            raise ValueError(f"target_modules={targets} disagree with the model's LoRA layers: {diff!r} {has}")
    return {n: (layer.in_features, layer.out_features) for n, layer in layers.items()}


def _check_tensors(tensors, sizes, rank, path):
    """Every expected key present with the expected shape, no other key, finite floats; else ValueError."""
    expected = {}
    for name, (d_in, d_out) in sizes.items():
        expected[_peft_key(name, "lora_A")] = (rank, d_in)
        expected[_peft_key(name, "lora_B")] = (d_out, rank)
    for key, shape in expected.items():
        if key not in tensors:
            raise ValueError(f"{path}: key {key!r} is missing ({sum(k not in tensors for k in expected)} of "
                             f"{len(expected)} expected keys are)")
        t = tensors[key]
        if tuple(t.shape) != shape:
            raise ValueError(f"{path}: {key!r} has shape {tuple(t.shape)}, but the model with r={rank} needs {shape}")
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise ValueError(f"{path}: {key!r} is not a finite floating-point tensor ({t.dtype})")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise ValueError(f"{path}: unexpected key {unexpected[0]!r}; the model's LoRA keys look like {next(iter(expected))!r}")
