"""LoraConfig: one adapter's settings, checked once, with PEFT's field names; and PEFT's adapter_config.json.

A LoraConfig is built once where settings enter (apply_lora's keywords, the fine-tune's options, an
adapter file), is checked in __post_init__, and then travels as it is: apply_lora plans with it,
`model.lora_configs[name]` keeps it, save_adapter writes it (to_peft) and load_adapter reads it back
(from_peft). Everything that depends on a model (do the targets exist? is r at most min(d_in, d_out)?)
is checked by lora.inject.plan_lora against that model.

    field                 meaning                                              PEFT's default
    r                     rank of ΔW = (α / r) B A                              8
    lora_alpha            α                                                     8 (ours: 16)
    lora_dropout          dropout on the adapter's input x                      0.0
    target_modules        names, "all-linear", or a regex (a str, as in PEFT)   None = per model (GPT-2: c_attn)
    exclude_modules       names or a regex of modules to leave out              None
    use_rslora            scale by α / √r (Kalajdzievski, 2023)                 False
    use_dora              DoRA's magnitude vector (Liu et al., 2024)            False
    init_lora_weights     True (A Kaiming-uniform, B = 0), "gaussian",         True
                          "pissa", "pissa_niter_<k>"
    layers_to_transform   layer indices to keep                                 None
    layers_pattern        the name of the layer list ("h")                      None
    rank_pattern          {name pattern: r} per layer                           {}
    alpha_pattern         {name pattern: α} per layer                           {}

Our defaults are PEFT's except lora_alpha (16 = 2r, the course's choice) and target_modules
(("c_attn",), PEFT's choice for GPT-2, written out because this library knows no model types).
"""

import dataclasses
import json
import os
import re

from lora.checks import check_bool, check_float, check_int, check_int_list, check_positive
from lora.init import check_init
from lora.targets import ALL_LINEAR, peft_targets, user_targets

CONFIG_NAME = "adapter_config.json"

# Every field PEFT 0.21.2 writes for a LoraConfig, at its default value (compare
# tests/fixtures/peft_gpt2_tiny/adapter/adapter_config.json, written by PEFT itself).
PEFT_DEFAULTS = {
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
# Fields of adapter_config.json that do not change what a loaded adapter computes.
_IGNORED = {"auto_mapping", "base_model_name_or_path", "corda_config", "eva_config", "fan_in_fan_out",
            "inference_mode", "loftq_config", "lora_ga_config", "peft_version", "revision", "task_type"}


def _patterns(field, patterns, check_value):
    if not isinstance(patterns, dict):
        raise ValueError(f"{field}={patterns!r}: give a dict of name pattern -> value")
    for key, value in patterns.items():
        if not isinstance(key, str):
            raise ValueError(f"{field} key {key!r} is not a string")
        try:
            re.compile(key)
        except re.error as e:
            raise ValueError(f"{field} key {key!r} is not a valid regular expression ({e})") from None
        check_value(f"{field}[{key!r}]", value)
    return dict(patterns)


@dataclasses.dataclass
class LoraConfig:
    """One LoRA adapter's settings (PEFT's LoraConfig fields); see the module docstring for each field.

    Raises:
        ValueError: in __post_init__, naming the first bad field and what is allowed.
    """

    r: int = 8                              # rank of the update ΔW = (α / r) B A
    lora_alpha: float = 16                  # α: the update is scaled by α / r (α / √r with rsLoRA)
    lora_dropout: float = 0.0               # dropout probability on the adapter's input, in [0, 1)
    target_modules: object = ("c_attn",)    # names (suffix rule), "all-linear", or a regex (str or re.Pattern)
    exclude_modules: object = None          # names or a regex of modules to leave out
    use_rslora: bool = False                # scale by α / √r instead of α / r
    use_dora: bool = False                  # DoRA: a trained magnitude per output row (linear layers only)
    init_lora_weights: object = True        # True | "gaussian" | "pissa" | "pissa_niter_<k>"
    layers_to_transform: object = None      # None, or layer indices to keep (with layers_pattern)
    layers_pattern: object = None           # None, or the name(s) of the layer list, e.g. "h"
    rank_pattern: dict = dataclasses.field(default_factory=dict)   # {name pattern: r}, PEFT's matching rule
    alpha_pattern: dict = dataclasses.field(default_factory=dict)  # {name pattern: α}

    def __post_init__(self):
        self.r = check_int("r", self.r)
        self.lora_alpha = check_positive("lora_alpha", self.lora_alpha)
        self.lora_dropout = check_float("lora_dropout", self.lora_dropout, 0.0, 1.0, low_open=False)
        check_bool("use_rslora", self.use_rslora)
        check_bool("use_dora", self.use_dora)
        if self.init_lora_weights is not True:  # True is "default"; anything else must be a name we implement
            if not isinstance(self.init_lora_weights, str) or self.init_lora_weights == "default":
                raise ValueError(f"init_lora_weights={self.init_lora_weights!r}: only True, 'gaussian', 'pissa' and "
                                 "'pissa_niter_<k>' are implemented")
            check_init(self.init_lora_weights, field="init_lora_weights")
        self.target_modules = peft_targets(self.target_modules, "target_modules")
        if self.exclude_modules is not None:
            self.exclude_modules = peft_targets(self.exclude_modules, "exclude_modules")
        if self.layers_to_transform is not None:
            self.layers_to_transform = check_int_list("layers_to_transform", self.layers_to_transform)
            if isinstance(self.target_modules, re.Pattern):
                raise ValueError("layers_to_transform cannot be used with a regular-expression target (PEFT's rule)")
        if self.layers_pattern is not None:
            pattern = [self.layers_pattern] if isinstance(self.layers_pattern, str) else self.layers_pattern
            if not isinstance(pattern, (list, tuple)) or not pattern or not all(isinstance(p, str) and p for p in pattern):
                raise ValueError(f"layers_pattern={self.layers_pattern!r}: give a name or a list of names")
            if self.layers_to_transform is None:
                raise ValueError(f"layers_pattern={self.layers_pattern!r} needs layers_to_transform")
            self.layers_pattern = tuple(pattern)
        self.rank_pattern = _patterns("rank_pattern", self.rank_pattern or {}, check_int)
        self.alpha_pattern = _patterns("alpha_pattern", self.alpha_pattern or {}, check_positive)

    @property
    def init(self):
        """init_lora_weights in lora.init's names: "default", "gaussian", "pissa" or "pissa_niter_<k>"."""
        return "default" if self.init_lora_weights is True else self.init_lora_weights

    def rank_alpha(self, name):
        """(r, α) of the layer called `name`: rank_pattern / alpha_pattern's first matching key wins (PEFT's rule)."""
        r = next((v for k, v in self.rank_pattern.items() if re.match(rf"(.*\.)?({k})$", name)), self.r)
        a = next((v for k, v in self.alpha_pattern.items() if re.match(rf"(.*\.)?({k})$", name)), self.lora_alpha)
        return r, a

    def to_peft(self, layer_names=(), base_model_name_or_path=None, fan_in_fan_out=True):
        """This config as the adapter_config.json dict PEFT 0.21.2 writes.

        "all-linear" is written as the names of the layers it chose (`layer_names`, their last parts),
        as PEFT writes it; a regex as its bare pattern string (PEFT's convention for a str). A PiSSA
        adapter is written with init_lora_weights=True, as PEFT's docs prescribe: loading it must not
        run the SVD again on the already-residual base.
        """
        targets = self.target_modules
        if targets == ALL_LINEAR:
            targets = sorted({n.rsplit(".", 1)[-1] for n in layer_names})
        exclude = self.exclude_modules
        return dict(
            PEFT_DEFAULTS, r=self.r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
            target_modules=targets.pattern if isinstance(targets, re.Pattern) else list(targets),
            exclude_modules=exclude.pattern if isinstance(exclude, re.Pattern) else (None if exclude is None else list(exclude)),
            use_rslora=self.use_rslora, use_dora=self.use_dora,
            init_lora_weights="gaussian" if self.init_lora_weights == "gaussian" else True,
            layers_to_transform=None if self.layers_to_transform is None else list(self.layers_to_transform),
            layers_pattern=None if self.layers_pattern is None else (
                self.layers_pattern[0] if len(self.layers_pattern) == 1 else list(self.layers_pattern)),
            rank_pattern=dict(self.rank_pattern), alpha_pattern=dict(self.alpha_pattern),
            fan_in_fan_out=bool(fan_in_fan_out), base_model_name_or_path=base_model_name_or_path)

    @classmethod
    def from_peft(cls, config, source=CONFIG_NAME):
        """A LoraConfig from PEFT's adapter_config.json dict, refusing what this library does not implement.

        A field set to anything but its default asks for a PEFT feature (LoftQ, extra trained modules,
        ...) we do not implement, and is refused by name instead of silently computing something else.
        Raises:
            ValueError: naming `source` and the field as the file spells it.
        """
        if not isinstance(config, dict) or config.get("peft_type") != "LORA":
            got = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
            raise ValueError(f"{source}: peft_type={got!r}; only 'LORA' adapters can be loaded")
        for field in ("r", "lora_alpha", "target_modules"):
            if field not in config:
                raise ValueError(f"{source}: required field {field!r} is missing")
        if config.get("bias", "none") != "none":
            raise ValueError(f"{source}: bias={config['bias']!r}; only 'none' is supported (biases stay frozen)")
        ours = {f.name for f in dataclasses.fields(cls)}
        for field, value in sorted(config.items()):
            if field in _IGNORED or field in ours or field in ("peft_type", "bias"):
                continue
            if value and value != PEFT_DEFAULTS.get(field):
                raise ValueError(f"{source}: {field}={value!r} asks for a PEFT feature this library does not implement")
        kwargs = {f: config[f] for f in ours if f in config}
        for f in ("rank_pattern", "alpha_pattern"):
            kwargs[f] = kwargs.get(f) or {}
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None


# apply_lora's keyword form: our names and their defaults (LoraConfig's, in our spelling)
KEYWORD_DEFAULTS = dict(rank=8, alpha=16, dropout=0.0, targets=("c_attn",), use_rslora=False, use_dora=False,
                        init="default", exclude=None, layers_to_transform=None, layers_pattern=None,
                        rank_pattern=None, alpha_pattern=None)


def config_from_keywords(**keywords):
    """apply_lora's keyword form, in our names (KEYWORD_DEFAULTS), as a LoraConfig.

    Targets and exclusions are read in our spelling (lora.targets.user_targets: "c_attn, c_proj" are
    names, "re:<pattern>" a regex); init uses lora.init's names ("default" for PEFT's True).
    Raises:
        ValueError: an unknown keyword (the message lists them), or a bad value (see LoraConfig).
    """
    unknown = sorted(set(keywords) - set(KEYWORD_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r}; apply_lora takes a LoraConfig or the keywords "
                         f"{list(KEYWORD_DEFAULTS)}")
    k = {**KEYWORD_DEFAULTS, **keywords}
    try:
        if k["init"] != "default":
            check_init(k["init"])
        return LoraConfig(
            r=k["rank"], lora_alpha=k["alpha"], lora_dropout=k["dropout"], target_modules=user_targets(k["targets"]),
            exclude_modules=None if k["exclude"] is None else user_targets(k["exclude"], "exclude"),
            use_rslora=k["use_rslora"], use_dora=k["use_dora"],
            init_lora_weights=True if k["init"] == "default" else k["init"],
            layers_to_transform=k["layers_to_transform"], layers_pattern=k["layers_pattern"],
            rank_pattern=k["rank_pattern"] or {}, alpha_pattern=k["alpha_pattern"] or {})
    except ValueError as e:  # LoraConfig says PEFT's field names; say the keywords the caller used
        raise ValueError(in_our_names(e)) from None


# LoraConfig's field -> the keyword form's name for it
OUR_NAMES = {"r": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout", "target_modules": "targets",
             "exclude_modules": "exclude", "init_lora_weights": "init"}


def in_our_names(error, names=OUR_NAMES):
    """The message of a LoraConfig error with its leading field name ("r=0: ...") said as `names` say it."""
    field, sep, rest = str(error).partition("=")
    return f"{names.get(field, field)}{sep}{rest}"


def read_adapter_config(directory):
    """Read `directory`/adapter_config.json as a dict (JSON checked; LoraConfig.from_peft checks the fields).

    Raises:
        FileNotFoundError: no such directory or file.
        ValueError: not valid JSON, or a key given twice.
    """
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"adapter directory {os.fspath(directory)!r} does not exist")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing; an adapter directory holds {CONFIG_NAME} and "
                                "adapter_model.safetensors")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"a key is given twice: {sorted(k for k in keys if keys.count(k) > 1)[0]!r}")
    return dict(pairs)


def write_adapter_config(path, config):
    """`config` (a to_peft() dict) as JSON in the file `path` (sorted keys, as PEFT writes it)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
