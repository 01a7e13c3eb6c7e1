"""PEFT's adapter_config.json, both ways: our adapter settings -> PEFT's LoraConfig fields, and back.

    ours (apply_lora)             PEFT's adapter_config.json
    rank, alpha, dropout          r, lora_alpha, lora_dropout
    targets                       target_modules ("all-linear" written as the layer names it chose;
                                  a regex as a bare str, PEFT's convention)
    use_rslora, use_dora          use_rslora, use_dora
    init                          init_lora_weights (True for "default"; PiSSA saved as True, see below)
    exclude                       exclude_modules
    layers_to_transform/_pattern  layers_to_transform, layers_pattern
    rank_pattern, alpha_pattern   rank_pattern, alpha_pattern
    biases frozen                 bias: "none"

Every other field PEFT writes is written at its default. A file that sets one of them to something
else asks for a PEFT feature this library does not implement (LoftQ, extra trained modules, ...), and
reading it raises, naming the field, instead of silently computing something else.
"""

import json
import os

from lora.adapter_layout import CONFIG_NAME, WEIGHTS_NAME
from lora.init import init_from_peft
from lora.targets import from_peft_targets, to_peft_targets

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
            "inference_mode", "loftq_config", "lora_ga_config", "peft_version", "revision", "task_type"}
_READ = {"peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora", "bias", "use_dora",
         "init_lora_weights", "exclude_modules", "layers_to_transform", "layers_pattern", "rank_pattern",
         "alpha_pattern"}


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
    try:
        init_from_peft(config.get("init_lora_weights", True))
        for field in ("target_modules", "exclude_modules"):
            from_peft_targets(config.get(field))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    pattern = config.get("layers_pattern")
    if pattern is not None and not (isinstance(pattern, str) or (isinstance(pattern, list)
                                                                  and all(isinstance(p, str) for p in pattern))):
        raise ValueError(f"{path}: layers_pattern={pattern!r}: give a name or a list of names")
    return config


def options_from_peft(config):
    """A read PEFT config -> apply_lora's arguments: (rank, alpha, dropout, targets, use_rslora), options."""
    options = dict(use_dora=config.get("use_dora", False), init=init_from_peft(config.get("init_lora_weights", True)),
                   exclude=from_peft_targets(config.get("exclude_modules")),
                   layers_to_transform=config.get("layers_to_transform"), layers_pattern=config.get("layers_pattern"),
                   rank_pattern=config.get("rank_pattern") or None, alpha_pattern=config.get("alpha_pattern") or None)
    settings = (config["r"], config["lora_alpha"], config.get("lora_dropout", 0.0),
                from_peft_targets(config["target_modules"]), config.get("use_rslora", False))
    return settings, options


def peft_fields(options):
    """apply_lora's options -> PEFT's fields. A PiSSA adapter is written with init_lora_weights=True, as
    PEFT's docs prescribe: loading it must not run the SVD again on the already-residual base."""
    out = dict(use_dora=options.get("use_dora", False), init_lora_weights=True,
               rank_pattern=options.get("rank_pattern") or {}, alpha_pattern=options.get("alpha_pattern") or {},
               layers_to_transform=options.get("layers_to_transform"), layers_pattern=options.get("layers_pattern"))
    if options.get("init") == "gaussian":
        out["init_lora_weights"] = "gaussian"  # harmless on load: the saved A and B replace the initial ones
    exclude = options.get("exclude")
    out["exclude_modules"] = None if exclude is None else to_peft_targets(exclude)
    return out


def peft_config(rank, alpha, dropout, targets, use_rslora, base_model_name_or_path=None, fan_in_fan_out=True,
                **fields):
    """The adapter_config.json dict PEFT 0.21.2 writes for these settings; `fields` are further PEFT fields
    (peft_fields gives them). Targets: a list of names, or a regex written as its bare pattern."""
    return dict(_PEFT_DEFAULTS, r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=to_peft_targets(targets),
                use_rslora=use_rslora, fan_in_fan_out=bool(fan_in_fan_out),
                base_model_name_or_path=base_model_name_or_path, **fields)


def write_adapter_config(path, config):
    """`config` as JSON in the file `path` (sorted keys, as PEFT writes adapter_config.json)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
