"""Saving and loading LoRA adapters in PEFT's file layout, so adapters move both ways between this
library and PEFT on Hugging Face's GPT-2.

    <folder>/adapter_config.json           LoraConfig.to_peft() (lora.config)
    <folder>/adapter_model.safetensors     base_model.model.<module path>.lora_A.weight   (r, d_in)
                                           base_model.model.<module path>.lora_B.weight   (d_out, r)

Where each adapter's folder is (the default one at the top, the others in sub-folders) and what a
folder may hold is lora.io.adapter_layout; the tensor names per layer type are lora.io.adapter_keys.
"base_model.model." is where PEFT's wrappers put the original model; PEFT names the tensors
`lora_A.<adapter name>.weight` in memory and drops the adapter name in the file. Our lora_A / lora_B
are raw Parameters with nn.Linear's (d_out, d_in) layout, exactly PEFT's lora_A / lora_B nn.Linear
weights, so the tensors are written as they are.

Shape legend: r rank, d_in / d_out the adapted layer's input / output sizes.
"""

import collections
import os
import re

import torch

from lora.adapter import check_adapter_name
from lora.config import CONFIG_NAME, LoraConfig, read_adapter_config, write_adapter_config
from lora.embedding import EmbeddingAdapter
from lora.inject import apply_lora, choose_layers, plan_lora
from lora.io.adapter_keys import adapter_tensors, copy_in, layer_shapes, peft_key
from lora.io.adapter_layout import DEFAULT, WEIGHTS_NAME, adapter_path, check_save_target, find_adapter, saved_adapters
from lora.io.files import staged_writes
from lora.io.safetensors_io import load_file, serialize
from lora.model_layers import adapter_names, check_adapters_exist, lora_modules, mark_only_lora_trainable


def lora_state_dict(model, adapter_name=None):
    """The LoRA tensors of `model` (of one adapter, or of all), keyed as in model.state_dict().

    Keys look like "<module path>.adapters.<adapter name>.lora_A" (DoRA adds "...lora_magnitude_vector",
    an embedding has lora_embedding_A / _B). LoRA layers are found by type, not by parameter names.
    Raises:
        ValueError: an adapter name the model does not have.
    """
    if adapter_name is not None:
        check_adapters_exist(model, [adapter_name])
    return {f"{name}.adapters.{a}.{which}": t.detach()
            for name, layer in lora_modules(model) for a in layer.adapters if adapter_name in (None, a)
            for which, t in adapter_tensors(layer, a).items()}


def _adapter_layers(model, adapter_name):
    """[(name, layer)] of the LoRA layers holding adapter `adapter_name`, in module order."""
    return [(n, layer) for n, layer in lora_modules(model) if adapter_name in layer.adapters]


def _agreed(name, rows, what, values):
    if len(set(values)) > 1:
        raise ValueError(f"the layers of adapter {name!r} disagree on {what} ({sorted(set(values))}); one adapter "
                         "file holds one value")
    return values[0] if values else None


def saved_config(model, adapter_name):
    """The LoraConfig a file for adapter `adapter_name` must carry so that loading it rebuilds exactly its layers.

    That is model.lora_configs[name] when it still selects exactly these layers with these ranks
    and alphas. Otherwise (layers built by hand, a layer added outside the targets, mixed ranks), it
    names every layer by its full path and gives each its own r and α through rank_pattern /
    alpha_pattern keys "^<escaped path>", which PEFT matches the same way.
    Raises:
        ValueError: the layers disagree on rsLoRA, DoRA or dropout, which one file cannot express.
    """
    rows = _adapter_layers(model, adapter_name)
    adapters = [layer.adapters[adapter_name] for _, layer in rows]
    linear = [a for a in adapters if not isinstance(a, EmbeddingAdapter)]
    use_rslora = _agreed(adapter_name, rows, "use_rslora", [a.use_rslora for a in adapters])
    use_dora = _agreed(adapter_name, rows, "use_dora", [a.use_dora for a in linear]) or False
    dropout = _agreed(adapter_name, rows, "dropout", [getattr(a.dropout, "p", 0.0) for a in linear]) or 0.0
    have = {n: (layer.adapters[adapter_name].rank, layer.adapters[adapter_name].alpha) for n, layer in rows}
    record = getattr(model, "lora_configs", {}).get(adapter_name)
    if record is not None:
        try:
            chosen = choose_layers(model, record)
        except ValueError:
            chosen = {}
        if {n: (r, a) for n, (_, r, a) in chosen.items()} == have and (record.use_rslora, record.use_dora) == (
                use_rslora, use_dora):
            return record
    (rank, alpha), _ = collections.Counter(have.values()).most_common(1)[0]
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=tuple(have), use_rslora=use_rslora,
        use_dora=use_dora, init_lora_weights=True if record is None else record.init_lora_weights,
        rank_pattern={"^" + re.escape(n): r for n, (r, _) in have.items() if r != rank},
        alpha_pattern={"^" + re.escape(n): a for n, (_, a) in have.items() if a != alpha})
    if {n: (r, a) for n, (_, r, a) in choose_layers(model, config).items()} != have:
        raise ValueError(f"adapter {adapter_name!r}'s layers cannot be described by an adapter config")
    return config


def adapter_files(model, adapter_name, base_model_name_or_path=None, fan_in_fan_out=True):
    """(config dict, {PEFT key: tensor}): adapter `adapter_name` as PEFT writes its two files.

    A PiSSA adapter is written with init_lora_weights=True: it only reproduces the trained model on
    the residual base PiSSA left in the model, so save that base too (its state dict) and load it
    before the adapter.
    """
    rows = _adapter_layers(model, adapter_name)
    config = saved_config(model, adapter_name).to_peft([n for n, _ in rows], base_model_name_or_path, fan_in_fan_out)
    tensors = {peft_key(n, which): t.detach() for n, layer in rows
               for which, t in adapter_tensors(layer, adapter_name).items()}
    return config, tensors


def save_adapter(model, directory, adapter_name=None, base_model_name_or_path=None, fan_in_fan_out=True):
    """Write adapters into `directory` in PEFT's layout, adding to what is there (lora.io.adapter_layout).

    "default" goes to the top of `directory`, every other adapter to `directory/<name>/`, as PEFT's
    save_pretrained lays them out, so adapters saved one call at a time all stay and all load. Only
    the adapters written are replaced. Every file is written aside first and renamed into place at
    the end (lora.io.files.staged_writes): a crash or Ctrl-C leaves the old adapter or the new one, never
    a config beside another adapter's tensors.

    Args:
        model: a model with LoRA adapters.
        directory: the adapter folder; created (with its parents) if missing.
        adapter_name: None (every adapter), a name, or a list of names.
        base_model_name_or_path: recorded for PEFT (e.g. "gpt2"); PEFT uses it to find the base model.
        fan_in_fan_out: the flag PEFT expects for a base stored as (d_in, d_out) matrices, as Hugging
            Face's GPT-2 stores them (Conv1D layers); True by default, as PEFT writes it for GPT-2. It
            does not change the tensors: lora_A is (r, d_in) and lora_B (d_out, r) either way, and only
            PEFT's merge reads it. Pass False for a base made of nn.Linear layers in PEFT.
    Returns:
        the directory, as given.
    Raises:
        ValueError: no LoRA layers, an unknown adapter name, an adapter whose layers disagree;
            `directory` is a file, holds something other than adapters, or would become ambiguous
            (nothing is written then).
        PermissionError: `directory`, or an adapter folder to be replaced, is read-only.
    """
    names = _names_to_save(model, adapter_name)
    files = {n: adapter_files(model, n, base_model_name_or_path, fan_in_fan_out) for n in names}
    check_save_target(directory, names)
    with staged_writes() as stage:
        for name, (config, tensors) in files.items():
            if name == DEFAULT:  # two files at the top, beside the other adapters' folders
                folder = adapter_path(directory, name)
                weights, config_file = stage.file(folder / WEIGHTS_NAME), stage.file(folder / CONFIG_NAME)
            else:  # the adapter's own folder, replaced whole
                folder = stage.folder(adapter_path(directory, name))
                weights, config_file = folder / WEIGHTS_NAME, folder / CONFIG_NAME
            with open(weights, "wb") as f:
                f.writelines(serialize(tensors, metadata={"format": "pt"}))  # PEFT's metadata
            write_adapter_config(config_file, config)
    return directory


def _names_to_save(model, adapter_name):
    """The adapters save_adapter writes: all of the model's, or the named ones (checked)."""
    names = adapter_names(model)
    if not names:
        raise ValueError(f"{type(model).__name__} has no LoRA layers to save; call apply_lora first")
    if adapter_name is None:
        return names
    wanted = [adapter_name] if isinstance(adapter_name, str) else adapter_name
    if not isinstance(wanted, (list, tuple)) or not wanted or len(set(wanted)) != len(wanted):
        raise ValueError(f"adapter_name={adapter_name!r}: give None (every adapter), a name or a list of distinct names")
    check_adapters_exist(model, wanted)
    return list(wanted)


def load_adapter(model, directory, adapter_name=None):
    """Load PEFT-format LoRA adapters into `model`, adding each adapter the model does not have yet.

    With adapter_name=None every adapter of the folder is loaded (lora.io.adapter_layout.saved_adapters:
    the top-level files as "default", each sub-folder under its name). With a name, that adapter's
    files are loaded: `directory/<name>/` if there is one, else the folder's only, top-level adapter
    under that name (as PEFT's load_adapter(path, adapter_name) does).

    Everything is checked before anything changes: each config against the model (targets exist,
    and an adapter of the same name selects the same layers with the same r, lora_alpha, use_rslora
    and use_dora and is not merged), then every tensor key and shape against the model and the
    config. A new adapter is added as apply_lora adds it (active if it is the model's first, else
    inactive), with the file's init_lora_weights, as PEFT loads it: a file saying "pissa" runs the
    SVD on the model's base first (our files say True, see adapter_files). The saved A and B then
    replace the initial ones. Afterwards the active adapters are trainable and all else frozen.
    fan_in_fan_out is ignored: it never changes the tensors.

    Returns:
        the model.
    Raises:
        FileNotFoundError: the directory, a config or a tensor file is missing.
        ValueError: a bad or unsupported config (naming the file and its key), a bad sub-folder name,
            an ambiguous folder, a truncated or corrupted tensor file, or a key or shape that does not
            fit (the message names the first offending key). The model is left as it was.
    """
    if adapter_name is None:
        folders = list(saved_adapters(directory).items())
    else:
        folders = [(check_adapter_name(adapter_name), find_adapter(directory, adapter_name))]
    loaded = [(name, *_read_checked(model, name, d)) for name, d in folders]
    for name, config, tensors in loaded:
        if not _adapter_layers(model, name):
            apply_lora(model, config, adapter_name=name)
        for n, layer in _adapter_layers(model, name):
            copy_in(layer, name, n, tensors)
    mark_only_lora_trainable(model)
    return model


def _read_checked(model, name, directory):
    """(the adapter's LoraConfig, its tensors) from `directory`, checked against `model`."""
    config_path = os.path.join(directory, CONFIG_NAME)
    config = LoraConfig.from_peft(read_adapter_config(directory), source=config_path)
    weights = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{weights} is missing; an adapter directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    tensors, _ = load_file(weights)
    try:
        existing = _adapter_layers(model, name)
        if existing:
            chosen = choose_layers(model, config)
            _check_existing(name, existing, chosen, config)
        else:
            chosen = {n: (m, r, a) for n, m, r, a in plan_lora(model, config, name)}
    except ValueError as e:
        raise ValueError(f"{config_path}: {e}") from None
    _check_tensors(tensors, {n: layer_shapes(m, r, config.use_dora) for n, (m, r, _) in chosen.items()}, weights)
    return config, tensors


def _check_existing(name, existing, chosen, config):
    """Adapter `name` is on the model already: the config must select the same layers with the same settings."""
    for n, layer in existing:
        if name in layer.merged_adapters:
            raise ValueError(f"{n!r} is merged; call unmerge_lora(model) before loading new weights")
        adapter = layer.adapters[name]
        if adapter.use_dora != (config.use_dora and not isinstance(adapter, EmbeddingAdapter)):
            raise ValueError(f"config has use_dora={config.use_dora} but adapter {name!r} of {n!r} does not match")
    have = {n: (layer.adapters[name].rank, layer.adapters[name].alpha, layer.adapters[name].use_rslora)
            for n, layer in existing}
    want = {n: (r, a, config.use_rslora) for n, (_, r, a) in chosen.items()}
    for n in sorted(set(have) | set(want)):
        if n not in have or n not in want:
            raise ValueError(f"target_modules={config.target_modules} disagree with adapter {name!r}'s layers: {n!r} "
                             f"{'has LoRA' if n in have else 'has no LoRA'}")
        if have[n] != want[n]:
            (r, a, rs), (r2, a2, rs2) = want[n], have[n]
            raise ValueError(f"config has r={r}, lora_alpha={a}, use_rslora={rs} for {n!r} but adapter {name!r} "
                             f"has rank={r2}, alpha={a2}, use_rslora={rs2}")


def _check_tensors(tensors, shapes, path):
    """Every expected key present with the expected shape, no other key, finite floats; else ValueError."""
    expected = {peft_key(n, which): shape for n, layer in shapes.items() for which, shape in layer.items()}
    for key, shape in expected.items():
        if key not in tensors:
            hint = " (use_dora=True in the config asks for DoRA's magnitude vectors)" \
                if key.endswith("lora_magnitude_vector") else ""
            raise ValueError(f"{path}: key {key!r} is missing{hint} ({sum(k not in tensors for k in expected)} of "
                             f"{len(expected)} expected keys are)")
        t = tensors[key]
        if tuple(t.shape) != shape:
            raise ValueError(f"{path}: {key!r} has shape {tuple(t.shape)}, but the model with this config needs {shape}")
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise ValueError(f"{path}: {key!r} is not a finite floating-point tensor ({t.dtype})")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise ValueError(f"{path}: unexpected key {unexpected[0]!r}; the model's LoRA keys look like {next(iter(expected))!r}")
