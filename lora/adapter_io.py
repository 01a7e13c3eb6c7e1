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

import collections
import os
import re

import torch

from lora.adapter_config import (
    options_from_peft,
    peft_config,
    peft_fields,
    read_adapter_config,
    write_adapter_config,
)
from lora.adapter_keys import adapter_tensors, copy_in, layer_shapes, peft_key
from lora.adapter_layout import (
    CONFIG_NAME,
    DEFAULT,
    WEIGHTS_NAME,
    adapter_path,
    check_save_target,
    find_adapter,
    saved_adapters,
)
from lora.embedding import LoRAEmbedding
from lora.files import staged_writes
from lora.inject import apply_lora, lora_embeddings, lora_layers, mark_only_lora_trainable, plan_layers
from lora.layer import LoRALinear, check_adapter_name
from lora.safetensors_io import load_file, serialize
from lora.targets import ALL_LINEAR, layer_rank_alpha


def lora_state_dict(model, adapter_name=None):
    """The LoRA tensors of `model` (of one adapter, or of all), keyed as in model.state_dict().

    Keys look like "<module path>.adapters.<adapter name>.lora_A" (DoRA adds "...lora_magnitude_vector")
    and "<module path>.lora_embedding_A". LoRA layers are found by type, not by parameter names.
    """
    out = {}
    for name, layer in lora_layers(model):
        for a in layer.adapters:
            if adapter_name in (None, a):
                for which, t in adapter_tensors(layer, a).items():
                    out[f"{name}.adapters.{a}.{which}"] = t.detach()
    for name, emb in lora_embeddings(model):
        if adapter_name in (None, emb.adapter_name):
            for which, t in adapter_tensors(emb, emb.adapter_name).items():
                out[f"{name}.{which}"] = t.detach()
    return out


def _adapter_layers(model, adapter_name):
    """[(name, layer, rank, alpha, use_rslora)] of adapter `adapter_name`, linear layers and embeddings."""
    rows = []
    for n, layer in [*lora_layers(model), *lora_embeddings(model)]:
        if adapter_name in getattr(layer, "adapters", ()):
            a = layer.adapters[adapter_name]
            rows.append((n, layer, a.rank, a.alpha, a.use_rslora))
        elif getattr(layer, "adapter_name", None) == adapter_name:
            rows.append((n, layer, layer.rank, layer.alpha, layer.use_rslora))
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(rows, key=lambda row: order[row[0]])


def _patterns(rows, rank, alpha, options):
    """rank_pattern and alpha_pattern giving every layer its own (r, α): the recorded ones, plus the
    escaped full name of any layer they do not describe (layers built by hand)."""
    rank_pattern, alpha_pattern = dict(options.get("rank_pattern") or {}), dict(options.get("alpha_pattern") or {})
    for n, _, r, a, _ in rows:
        got = layer_rank_alpha(n, rank, alpha, rank_pattern, alpha_pattern)
        if got[0] != r:
            rank_pattern["^" + re.escape(n)] = r
        if got[1] != a:
            alpha_pattern["^" + re.escape(n)] = a
    return rank_pattern, alpha_pattern


def adapter_files(model, adapter_name, base_model_name_or_path=None, fan_in_fan_out=True):
    """(config, {PEFT key: tensor}): adapter `adapter_name` as PEFT writes its two files.

    Per-layer ranks and alphas are written as PEFT's rank_pattern / alpha_pattern; DoRA's magnitude
    and an embedding's tensors under PEFT's keys (lora.adapter_keys). A PiSSA adapter is written with
    init_lora_weights=True: it only reproduces the trained model on the residual base PiSSA left in
    the model, so save that base too (its state dict) and load it before the adapter.
    Raises:
        ValueError: the adapter's layers disagree on rsLoRA (layers built by hand).
    """
    rows = _adapter_layers(model, adapter_name)
    if len({row[4] for row in rows}) > 1:
        raise ValueError(f"the layers of adapter {adapter_name!r} disagree on use_rslora; one adapter file holds one")
    record = getattr(model, "lora_configs", {}).get(adapter_name, {})
    counts = collections.Counter((r, a) for _, _, r, a, _ in rows)
    rank, alpha = (record["rank"], record["alpha"]) if record else counts.most_common(1)[0][0]
    targets = record.get("targets", [ALL_LINEAR])
    if targets == [ALL_LINEAR]:  # PEFT writes the layer names "all-linear" resolved to, not the keyword
        targets = sorted({n.rsplit(".", 1)[-1] for n, *_ in rows})
    linear = [layer for _, layer, *_ in rows if not isinstance(layer, LoRAEmbedding)]
    dropout = getattr(linear[0].adapters[adapter_name].dropout, "p", 0.0) if linear else record.get("dropout", 0.0)
    fields = peft_fields(dict(record, use_dora=any(layer.adapters[adapter_name].use_dora for layer in linear)))
    fields["rank_pattern"], fields["alpha_pattern"] = _patterns(rows, rank, alpha, record)
    config = peft_config(rank, alpha, dropout, targets, rows[0][4], base_model_name_or_path, fan_in_fan_out, **fields)
    tensors = {peft_key(n, which): t.detach() for n, layer, *_ in rows
               for which, t in adapter_tensors(layer, adapter_name).items()}
    return config, tensors


def save_adapter(model, directory, adapter_name=None, base_model_name_or_path=None, fan_in_fan_out=True):
    """Write adapters into `directory` in PEFT's layout, adding to what is there (lora.adapter_layout).

    "default" goes to the top of `directory`, every other adapter to `directory/<name>/`, as PEFT's
    save_pretrained lays them out, so adapters saved one call at a time all stay and all load. Only
    the adapters written are replaced. Every file is written aside first and renamed into place at
    the end (lora.files.staged_writes): a crash or Ctrl-C leaves the old adapter or the new one, never
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
                weights, config_file = stage.file(adapter_path(directory, name) / WEIGHTS_NAME), \
                    stage.file(adapter_path(directory, name) / CONFIG_NAME)
            else:  # the adapter's own folder, replaced whole
                folder = stage.folder(adapter_path(directory, name))
                weights, config_file = folder / WEIGHTS_NAME, folder / CONFIG_NAME
            with open(weights, "wb") as f:
                f.writelines(serialize(tensors, metadata={"format": "pt"}))  # PEFT's metadata
            write_adapter_config(config_file, config)
    return directory


def _names_to_save(model, adapter_name):
    """The adapters save_adapter writes: all of the model's, or the named ones (checked)."""
    names = list(getattr(model, "lora_configs", {}))
    names += [a for _, layer in lora_layers(model) for a in layer.adapters if a not in names]  # layers built by hand
    names += [e.adapter_name for _, e in lora_embeddings(model) if e.adapter_name not in names]
    if not names:
        raise ValueError(f"{type(model).__name__} has no LoRA layers to save; call apply_lora first")
    if adapter_name is None:
        return names
    wanted = [adapter_name] if isinstance(adapter_name, str) else adapter_name
    if not isinstance(wanted, (list, tuple)) or not wanted or len(set(wanted)) != len(wanted):
        raise ValueError(f"adapter_name={adapter_name!r}: give None (every adapter), a name or a list of distinct names")
    for name in wanted:
        if name not in names:
            raise ValueError(f"unknown adapter {name!r}; the model has {names}")
    return list(wanted)


def load_adapter(model, directory, adapter_name=None):
    """Load PEFT-format LoRA adapters into `model`, adding each adapter the model does not have yet.

    With adapter_name=None every adapter of the folder is loaded (lora.adapter_layout.saved_adapters:
    the top-level files as "default", each sub-folder under its name). With a name, that adapter's
    files are loaded: `directory/<name>/` if there is one, else the folder's only, top-level adapter
    under that name (as PEFT's load_adapter(path, adapter_name) does).

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
        ValueError: a bad or unsupported config, a bad sub-directory name, an ambiguous folder, a
            truncated or corrupted tensor file, or a key or shape that does not fit (the message names
            the first offending key). The model is left as it was.
    """
    if adapter_name is None:
        folders = list(saved_adapters(directory).items())
    else:
        folders = [(check_adapter_name(adapter_name), find_adapter(directory, adapter_name))]
    loaded = [(name, *_read_checked(model, name, d)) for name, d in folders]
    for name, (settings, options), tensors in loaded:
        if not _adapter_layers(model, name):
            apply_lora(model, *settings, adapter_name=name, **options)
        for n, layer, *_ in _adapter_layers(model, name):
            copy_in(layer, name, n, tensors)
    mark_only_lora_trainable(model)
    return model


def _read_checked(model, name, directory):
    """(apply_lora's (settings, options), tensors) of the adapter in `directory`, checked against `model`."""
    config = read_adapter_config(directory)
    weights = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{weights} is missing; an adapter directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    tensors, _ = load_file(weights)
    settings, options = options_from_peft(config)
    try:
        existing = _adapter_layers(model, name)
        if existing:  # the same layers, ranks and settings, so only the tensors change
            options = dict(options, init="default")
        plan = plan_layers(model if not existing else _without(model, name), *settings, adapter_name=name, **options)
        if existing:
            _check_existing(name, existing, plan, settings, options)
    except ValueError as e:
        raise ValueError(f"{os.path.join(directory, CONFIG_NAME)}: {e}") from None
    _check_tensors(tensors, {n: layer_shapes(m, r, options["use_dora"]) for n, m, r, _ in plan}, weights)
    return (settings, options), tensors


def _without(model, name):
    """A shallow stand-in for `model` in which adapter `name` is not there yet, for planning only."""
    return _Renamed(model, name)


class _Renamed:
    """Proxy whose named_modules() hides adapter `name`'s layers' wrappers (their bases are planned instead)."""

    def __init__(self, model, name):
        self.model, self.name = model, name

    def named_modules(self):
        wrapped = {n for n, *_ in _adapter_layers(self.model, self.name)}
        for n, m in self.model.named_modules():
            if n in wrapped:
                yield n, m.base
            elif not any(n.startswith(w + ".") for w in wrapped):
                yield n, m

    def modules(self):
        return (m for _, m in self.named_modules())

    def get_output_embeddings(self):
        getter = getattr(self.model, "get_output_embeddings", None)
        return getter() if callable(getter) else None


def _check_existing(name, existing, plan, settings, options):
    """Adapter `name` is on the model already: the config must plan the same layers with the same settings."""
    have = {n: (r, a, use_rslora) for n, _, r, a, use_rslora in existing}
    want = {n: (r, a, settings[4]) for n, _, r, a in plan}
    for n, layer, *_ in existing:
        if name in getattr(layer, "merged_adapters", ()) or getattr(layer, "merged", False):
            raise ValueError(f"{n!r} is merged; call unmerge_lora(model) before loading new weights")
        dora = layer.adapters[name] if isinstance(layer, LoRALinear) else None
        if dora is not None and dora.use_dora != options["use_dora"]:
            raise ValueError(f"config has use_dora={options['use_dora']} but adapter {name!r} of {n!r} does not match")
    for n in sorted(set(have) | set(want)):
        if have.get(n) != want.get(n):
            if n not in have or n not in want:
                raise ValueError(f"target_modules={settings[3]} disagree with adapter {name!r}'s layers: {n!r} "
                                 f"{'has LoRA' if n in have else 'has no LoRA'}")
            (r, a, rs), (r2, a2, rs2) = want[n], have[n]
            raise ValueError(f"config has r={r}, lora_alpha={a}, use_rslora={rs} for {n!r} but adapter {name!r} "
                             f"has rank={r2}, alpha={a2}, use_rslora={rs2}")


def _check_tensors(tensors, shapes, path):
    """Every expected key present with the expected shape, no other key, finite floats; else ValueError."""
    expected = {peft_key(n, which): shape for n, layer in shapes.items() for which, shape in layer.items()}
    for key, shape in expected.items():
        if key not in tensors:
            raise ValueError(f"{path}: key {key!r} is missing ({sum(k not in tensors for k in expected)} of "
                             f"{len(expected)} expected keys are)")
        t = tensors[key]
        if tuple(t.shape) != shape:
            raise ValueError(f"{path}: {key!r} has shape {tuple(t.shape)}, but the model with this config needs {shape}")
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise ValueError(f"{path}: {key!r} is not a finite floating-point tensor ({t.dtype})")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise ValueError(f"{path}: unexpected key {unexpected[0]!r}; the model's LoRA keys look like {next(iter(expected))!r}")
