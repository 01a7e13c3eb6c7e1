"""PEFT's adapter_config.json, both ways: our adapter settings -> PEFT's LoraConfig fields, and back.

    ours                          PEFT's adapter_config.json
    rank, alpha, dropout          r, lora_alpha, lora_dropout
    targets                       target_modules ("all-linear" written as the layer names it chose)
    use_rslora                    use_rslora
    biases frozen                 bias: "none"

Every other field PEFT writes is written at its default. A file that sets one of them to something
else asks for a PEFT feature this library does not implement (DoRA, per-layer ranks, ...), and
reading it raises instead of silently computing something else.
"""

import json
import os

from lora.targets import ALL_LINEAR

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"

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


def peft_config(rank, alpha, dropout, targets, use_rslora, base_model_name_or_path=None, fan_in_fan_out=True):
    """The adapter_config.json dict PEFT 0.21.2 writes for these settings (targets as a list of names)."""
    return dict(_PEFT_DEFAULTS, r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                use_rslora=use_rslora, fan_in_fan_out=bool(fan_in_fan_out),
                base_model_name_or_path=base_model_name_or_path)


def write_adapter_config(directory, config):
    """`config` as adapter_config.json in `directory` (sorted keys, as PEFT writes it)."""
    with open(os.path.join(directory, CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
