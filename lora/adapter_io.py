"""Saving and loading LoRA adapters in PEFT's file layout, so adapters move both ways between this
library and PEFT on Hugging Face's GPT-2.

    directory/                          save_adapter(model, directory): every adapter, as PEFT's
        adapter_config.json             save_pretrained lays them out: the adapter named "default"
        adapter_model.safetensors       at the top,
        <name>/adapter_config.json      every other one in a sub-directory named after it
        <name>/adapter_model.safetensors

    adapter_model.safetensors:  base_model.model.<module path>.lora_A.weight   (r, d_in)
                                base_model.model.<module path>.lora_B.weight   (d_out, r)

"base_model.model." is where PEFT's wrappers put the original model; PEFT names the tensors
`lora_A.<adapter name>.weight` in memory and drops the adapter name in the file (the directory
says which adapter it is). Our lora_A / lora_B are raw Parameters with nn.Linear's (d_out, d_in)
layout, exactly PEFT's lora_A / lora_B nn.Linear weights, so the tensors are written as they are.

Shape legend: r rank, d_in / d_out the adapted layer's input / output sizes.
"""

import os
import pathlib

import torch

from lora.adapter_config import CONFIG_NAME, WEIGHTS_NAME, peft_config, read_adapter_config, write_adapter_config
from lora.files import atomic_dir
from lora.inject import apply_lora, lora_layers, mark_only_lora_trainable, plan_lora
from lora.layer import check_adapter_name
from lora.safetensors_io import load_file, save_file
from lora.targets import ALL_LINEAR, name_matches

DEFAULT = "default"  # PEFT's name for the first adapter; it is saved at the top of the directory
_PREFIX = "base_model.model."


def lora_state_dict(model, adapter_name=None):
    """The LoRA tensors of `model` (of one adapter, or of all), keyed as in model.state_dict().

    Keys look like "<module path>.adapters.<adapter name>.lora_A". LoRA layers are found by type
    (LoRALinear), not by matching parameter names.
    """
    out = {}
    for name, layer in lora_layers(model):
        for a, adapter in layer.adapters.items():
            if adapter_name in (None, a):
                out[f"{name}.adapters.{a}.lora_A"] = adapter.lora_A.detach()
                out[f"{name}.adapters.{a}.lora_B"] = adapter.lora_B.detach()
    return out


def adapter_files(model, adapter_name, base_model_name_or_path=None, fan_in_fan_out=True):
    """(config, {PEFT key: tensor}): adapter `adapter_name` as PEFT writes its two files.

    Raises:
        ValueError: the adapter's layers disagree on rank, alpha or rsLoRA (layers built by hand).
    """
    modules = [(n, layer.adapters[adapter_name]) for n, layer in lora_layers(model) if adapter_name in layer.adapters]
    settings = {(a.rank, a.alpha, a.use_rslora) for _, a in modules}
    if len(settings) > 1:
        raise ValueError(f"the layers of adapter {adapter_name!r} disagree on (rank, alpha, use_rslora): "
                         f"{sorted(settings)}; one adapter file holds a single setting")
    (rank, alpha, use_rslora), = settings
    targets = getattr(model, "lora_configs", {}).get(adapter_name, {}).get("targets", [ALL_LINEAR])
    if targets == [ALL_LINEAR]:  # PEFT writes the layer names "all-linear" resolved to, not the keyword
        targets = sorted({n.rsplit(".", 1)[-1] for n, _ in modules})
    dropout = getattr(modules[0][1].dropout, "p", 0.0)
    config = peft_config(rank, alpha, dropout, targets, use_rslora, base_model_name_or_path, fan_in_fan_out)
    tensors = {}
    for n, adapter in modules:
        tensors[_peft_key(n, "lora_A")] = adapter.lora_A.detach()
        tensors[_peft_key(n, "lora_B")] = adapter.lora_B.detach()
    return config, tensors


def save_adapter(model, directory, adapter_name=None, base_model_name_or_path=None, fan_in_fan_out=True):
    """Write adapters in PEFT's layout: the whole `directory` is built aside, then renamed into place.

    With adapter_name=None every adapter is written as PEFT's save_pretrained writes them ("default" at
    the top, the others in sub-directories named after them); with a name, that adapter's two files
    are written at the top of `directory`, the layout PEFT's load_adapter(directory, adapter_name)
    reads. Whatever `directory` held before is replaced whole (lora.files.atomic_dir), so a crash
    leaves the old directory or the new one, never a config beside another adapter's tensors.

    Args:
        model: a model with LoRA adapters.
        directory: the adapter directory; its parent is created if missing.
        adapter_name: None (all adapters) or the name of one.
        base_model_name_or_path: recorded for PEFT (e.g. "gpt2"); PEFT uses it to find the base model.
        fan_in_fan_out: the flag PEFT expects for a base stored as (d_in, d_out) matrices, as Hugging
            Face's GPT-2 stores them (Conv1D layers); True by default, as PEFT writes it for GPT-2. It
            does not change the tensors: lora_A is (r, d_in) and lora_B (d_out, r) either way, and only
            PEFT's merge reads it. Pass False for a base made of nn.Linear layers in PEFT.
    Returns:
        the directory, as given.
    Raises:
        ValueError: no LoRA layers, an unknown adapter name, or an adapter whose layers disagree.
    """
    names = list(getattr(model, "lora_configs", {}))
    names += [a for _, layer in lora_layers(model) for a in layer.adapters if a not in names]  # layers built by hand
    if not names:
        raise ValueError(f"{type(model).__name__} has no LoRA layers to save; call apply_lora first")
    if adapter_name is not None and adapter_name not in names:
        raise ValueError(f"unknown adapter {adapter_name!r}; the model has {names}")
    layout = {adapter_name: ""} if adapter_name is not None else {n: "" if n == DEFAULT else n for n in names}
    files = {sub: adapter_files(model, n, base_model_name_or_path, fan_in_fan_out) for n, sub in layout.items()}
    with atomic_dir(directory) as tmp:
        for sub, (config, tensors) in files.items():
            os.makedirs(tmp / sub, exist_ok=True)
            save_file(tensors, tmp / sub / WEIGHTS_NAME, metadata={"format": "pt"})  # PEFT's metadata
            write_adapter_config(tmp / sub, config)
    return directory


def load_adapter(model, directory, adapter_name=None):
    """Load PEFT-format LoRA adapters into `model`, adding each adapter the model does not have yet.

    With adapter_name=None every adapter of the directory is loaded: its top-level files as "default"
    and each sub-directory holding an adapter_config.json under the sub-directory's name (the layout
    of save_adapter and of PEFT's save_pretrained). With a name, the files at the top of `directory`
    are loaded as that adapter, as PEFT's load_adapter(directory, adapter_name) does.

    Everything is checked before anything changes: each config against the model (targets exist,
    and an adapter of the same name has the same r, lora_alpha, use_rslora and targets and is not
    merged), then every tensor key and shape against the model and the config. A new adapter is
    added as apply_lora adds it (active if it is the model's first, else inactive); afterwards the
    active adapters are trainable and all else frozen. fan_in_fan_out is ignored: it never changes
    the tensors.

    Returns:
        the model.
    Raises:
        FileNotFoundError: the directory, a config or a tensor file is missing.
        ValueError: a bad or unsupported config, a bad sub-directory name, a truncated or corrupted
            tensor file, or a key or shape that does not fit (the message names the first offending
            key). The model is left as it was.
    """
    loaded = [(name, *_read_checked(model, name, d)) for name, d in _adapter_dirs(directory, adapter_name)]
    for name, settings, tensors in loaded:
        if not any(name in layer.adapters for _, layer in lora_layers(model)):
            apply_lora(model, *settings, adapter_name=name)
        with torch.no_grad():
            for n, layer in lora_layers(model):
                if name in layer.adapters:
                    layer.adapters[name].lora_A.copy_(tensors[_peft_key(n, "lora_A")])
                    layer.adapters[name].lora_B.copy_(tensors[_peft_key(n, "lora_B")])
    mark_only_lora_trainable(model)
    return model


def _peft_key(name, which):
    return f"{_PREFIX}{name}.{which}.weight"


def _adapter_dirs(directory, adapter_name):
    """[(adapter name, its directory)] that load_adapter reads."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"adapter directory {os.fspath(directory)!r} does not exist")
    if adapter_name is not None:
        return [(check_adapter_name(adapter_name), directory)]
    found = [(DEFAULT, directory)] if (directory / CONFIG_NAME).is_file() else []
    for sub in sorted(directory.iterdir()):
        if sub.is_dir() and not sub.name.startswith(".") and (sub / CONFIG_NAME).is_file():
            try:
                found.append((check_adapter_name(sub.name), sub))
            except ValueError as e:
                raise ValueError(f"{sub}: the sub-directory's name is the adapter's name: {e}") from None
    if not found:
        raise FileNotFoundError(f"{directory / CONFIG_NAME} is missing; an adapter directory holds {CONFIG_NAME} and "
                                f"{WEIGHTS_NAME} (further adapters in sub-directories named after them)")
    return found


def _read_checked(model, name, directory):
    """((rank, alpha, dropout, targets, use_rslora), tensors) of the adapter in `directory`, checked against `model`."""
    config = read_adapter_config(directory)
    weights = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{weights} is missing; an adapter directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    tensors, _ = load_file(weights)
    rank, alpha = config["r"], config["lora_alpha"]
    dropout, use_rslora = config.get("lora_dropout", 0.0), config.get("use_rslora", False)
    targets = config["target_modules"]
    targets = [targets] if isinstance(targets, str) else targets
    existing = {n: layer for n, layer in lora_layers(model) if name in layer.adapters}
    try:
        if existing:
            sizes = _check_existing(model, name, existing, rank, alpha, use_rslora, targets)
        else:
            chosen = plan_lora(model, rank, alpha, dropout, targets, use_rslora, name)
            sizes = {n: (m.in_features, m.out_features) for n, m in chosen}
    except ValueError as e:
        raise ValueError(f"{os.path.join(directory, CONFIG_NAME)}: {e}") from None
    _check_tensors(tensors, sizes, rank, weights)
    return (rank, alpha, dropout, targets, use_rslora), tensors


def _check_existing(model, name, layers, rank, alpha, use_rslora, targets):
    """Return {layer name: (d_in, d_out)} of adapter `name`'s layers after checking they match the config."""
    for n, layer in layers.items():
        adapter = layer.adapters[name]
        if name in layer.merged_adapters:
            raise ValueError(f"{n!r} is merged; call unmerge_lora(model) before loading new weights")
        if (adapter.rank, adapter.alpha, adapter.use_rslora) != (rank, alpha, use_rslora):
            raise ValueError(f"config has r={rank}, lora_alpha={alpha}, use_rslora={use_rslora} but adapter {name!r} "
                             f"of {n!r} has rank={adapter.rank}, alpha={adapter.alpha}, use_rslora={adapter.use_rslora}")
    if targets != [ALL_LINEAR]:  # for "all-linear" the key check below compares the layer sets
        selected = {n for n, _ in model.named_modules() if n and any(name_matches(n, t) for t in targets)}
        if selected != set(layers):
            diff = sorted(selected ^ set(layers))[0]
            has = "has LoRA" if diff in layers else "has no LoRA"
            raise ValueError(f"target_modules={targets} disagree with adapter {name!r}'s layers: {diff!r} {has}")
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
