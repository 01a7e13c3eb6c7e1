"""Training checkpoints: one torch.save'd dict per run, written atomically, read with weights_only=True.

A checkpoint holds plain data only (tensors, dicts, lists, tuples, numbers, strings, None), so it
loads without unpickling arbitrary objects:

    format, version    "minigpt-checkpoint", 1
    step               optimizer steps completed
    model              state_dict, or only the parameters with requires_grad (trainable_only=True,
                       for LoRA runs whose frozen base can be rebuilt)
    optimizer          optimizer.state_dict() or None
    rng                {"torch": [CPU RNG state per process], "cuda": [per process: list per GPU],
                        "batch": state of the training batch generator}
    train_config       the TrainConfig as a dict; model_config: the GPTConfig as a dict
    history            {"train_losses", "val_losses", "tokens_seen"} so far
    extra              whatever the caller passes (tokenizer description, LoRA config, ...)
    checksum           sha256 over everything above

Note: the checksum exists because torch's zip reader does not verify tensor bytes; a flipped byte in
a weight would otherwise load silently. Loading validates everything (framing, checksum, configs,
names, shapes, optimizer layout, RNG states) before it touches the model or the optimizer, so a bad
file raises ValueError and leaves both as they were.
"""

import dataclasses
import hashlib
import os

import torch
import torch.distributed as dist

from lora.io.files import atomic_write

FORMAT, VERSION = "minigpt-checkpoint", 1
CKPT_NAME = "ckpt.pt"
KEYS = ("format", "version", "step", "model", "trainable_only", "optimizer", "rng",
        "train_config", "model_config", "history", "extra", "checksum")


def checkpoint_path(path):
    """`path` itself if it names a file, else path/ckpt.pt (a run's output folder)."""
    path = os.fspath(path)
    return path if path.endswith(".pt") else os.path.join(path, CKPT_NAME)


def rank_world():
    """(rank, world size) of this process; (0, 1) outside a distributed run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def capture_rng(generator=None):
    """RNG states to resume from: torch CPU and CUDA (one entry per process; in a distributed run all
    processes must call this, it gathers them) and the batch generator's (the same on every process)."""
    own = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])
    states = [own]
    if rank_world()[1] > 1:  # each process has its own dropout stream
        states = [None] * rank_world()[1]
        dist.all_gather_object(states, own)
    return {"torch": [s[0] for s in states], "cuda": [s[1] for s in states],
            "batch": generator.get_state() if generator is not None else None}


def config_dict(config):
    """A dataclass config as a plain dict ({} for None or a model without a dataclass config)."""
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config or {})


def _model_state(model, trainable_only):
    if trainable_only:
        return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    return model.state_dict()


def save_checkpoint(path, model, optimizer=None, *, step=0, train_config=None, rng=None, history=None,
                    extra=None, trainable_only=False):
    """Write a checkpoint atomically to `path` (a .pt file or a directory, see checkpoint_path).

    In a distributed run only rank 0 writes; the others return the path.

    Args:
        path: file or a run's output folder.
        model: the bare model (not a DDP or compiled wrapper), so names carry no prefix.
        optimizer: its state is stored when given.
        step: optimizer steps completed.
        train_config, rng, history, extra: see the module docstring; rng from capture_rng().
        trainable_only: store only parameters with requires_grad.
    Returns:
        The path written.
    Raises:
        ValueError: a value that weights_only loading could not read back (named by its key path), or a
            model or optimizer tensor holding NaN or inf; nothing is written then.
    """
    payload = {
        "format": FORMAT, "version": VERSION, "step": int(step),
        "model": _model_state(model, trainable_only), "trainable_only": bool(trainable_only),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng": rng, "train_config": config_dict(train_config),
        "model_config": config_dict(getattr(model, "config", None)),
        "history": history or {}, "extra": extra or {},
    }
    payload["checksum"] = _digest(payload)  # also rejects values weights_only could not load
    path = checkpoint_path(path)
    check_parts(payload, path)  # never write a checkpoint that loading would refuse (NaN or inf in a tensor)
    if rank_world()[0] != 0:
        return path
    with atomic_write(path) as f:
        _save(payload, f, path)
    return path


class _RecordingFile:
    """What torch.save writes into: the file's unbuffered stream, keeping the error of a failed write.

    torch reports a failed write (a full disk) as a RuntimeError about zip positions, which says
    nothing to the user; and a buffered file would try the write again when it is closed, raising a
    second error that hides the first. Writing past the buffer leaves nothing to flush.
    """

    def __init__(self, f):
        self.raw, self.error = getattr(f, "raw", f), None

    def write(self, data):
        view = memoryview(data).cast("B")
        try:
            while view:  # an unbuffered write may take only part of the data
                view = view[self.raw.write(view):]
        except BaseException as e:  # OSError, or Ctrl-C arriving in the middle of the write
            self.error = e
            raise
        return len(data)

    def flush(self):
        pass


def _save(payload, f, path):
    """torch.save into the open file f. A failed write is raised as an OSError naming `path`, and
    Ctrl-C as KeyboardInterrupt: torch's zip writer turns both into a RuntimeError when it tries to
    finish the archive on its way out."""
    f.flush()
    recorder = _RecordingFile(f)
    try:
        torch.save(payload, recorder)
    except RuntimeError as e:
        cause = recorder.error or e.__context__
        if isinstance(cause, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        if not isinstance(cause, OSError):
            raise
        raise OSError(cause.errno, f"{cause.strerror or cause}; the checkpoint was not written, the previous one "
                      "is kept", path) from None


def check_plain(obj, name="extra"):
    """Raise ValueError unless `obj` holds only what weights_only loading accepts (see the docstring)."""
    _feed(hashlib.sha256(), obj, name)


def _digest(obj):
    h = hashlib.sha256()
    _feed(h, obj, "")
    return h.hexdigest()


def _feed(h, obj, where):
    # walk the nested payload in a fixed order, hashing names, types and raw bytes
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"{where}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(obj, dict):
        for k in sorted(obj, key=repr):
            if where == "" and k == "checksum":
                continue
            if not isinstance(k, (str, int)):
                raise ValueError(f"checkpoint key {where}/{k!r} is a {type(k).__name__}; keys must be str or int")
            _feed(h, obj[k], f"{where}/{k}")
    elif isinstance(obj, (list, tuple)):
        h.update(f"{where}:{type(obj).__name__}{len(obj)}".encode())
        for i, v in enumerate(obj):
            _feed(h, v, f"{where}/{i}")
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        h.update(f"{where}={obj!r}".encode())
    else:
        raise ValueError(f"checkpoint value at {where or '/'} is a {type(obj).__name__}; only tensors, dicts, "
                         "lists, tuples, numbers, strings and None can be loaded with weights_only=True")


def read_checkpoint(path):
    """Load a checkpoint as a dict (on CPU) and check its framing and checksum; touches no model.

    Raises:
        FileNotFoundError: no file at the path.
        ValueError: truncated, corrupted, not a minigpt checkpoint, a part of the wrong type, or a
            model or optimizer tensor holding NaN or inf (see check_parts).
    """
    path = checkpoint_path(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip, pickle and unicode errors all mean the same thing here
        why = str(e).split(". ")[0]  # torch's zip reader appends a paragraph of advice
        raise ValueError(f"{path}: not a readable checkpoint (truncated or corrupted): {type(e).__name__}: {why}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file")
    if ckpt.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {ckpt.get('version')!r}; this code reads version {VERSION}")
    missing = [k for k in KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {missing}")
    if _digest(ckpt) != ckpt["checksum"]:
        raise ValueError(f"{path}: checksum mismatch, the file is corrupted")
    check_parts(ckpt, path)
    return ckpt


def _part(ok, path, part, value, want):
    if not ok:
        raise ValueError(f"{path}: checkpoint part {part!r} is {type(value).__name__} {value!r:.60}; expected {want}")


def _is_tensor_dict(d):
    return isinstance(d, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def check_parts(ckpt, path="checkpoint"):
    """Raise ValueError naming the first part of a checkpoint dict with the wrong type or a NaN/inf tensor.

    A checksum only proves the file is what its writer wrote; a hand-made file can carry a valid one.
    """
    step = ckpt["step"]
    _part(isinstance(step, int) and not isinstance(step, bool) and step >= 0, path, "step", step, "an int >= 0")
    _part(_is_tensor_dict(ckpt["model"]), path, "model", ckpt["model"], "a dict of name -> tensor")
    _part(isinstance(ckpt["trainable_only"], bool), path, "trainable_only", ckpt["trainable_only"], "True or False")
    opt = ckpt["optimizer"]
    _part(opt is None or isinstance(opt, dict) and isinstance(opt.get("state"), dict)
          and isinstance(opt.get("param_groups"), list)
          and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in opt["param_groups"])
          and all(isinstance(i, int) and isinstance(st, dict) for i, st in opt["state"].items()),
          path, "optimizer", opt, "None or an optimizer state_dict {'state': {int: {...}}, 'param_groups': [...]}")
    rng = ckpt["rng"]
    _part(rng is None or isinstance(rng, dict) and isinstance(rng.get("torch"), list)
          and isinstance(rng.get("cuda"), list) and all(isinstance(t, torch.Tensor) for t in rng["torch"])
          and (rng.get("batch") is None or isinstance(rng["batch"], torch.Tensor)),
          path, "rng", rng, "None or {'torch': [tensor], 'cuda': [...], 'batch': tensor or None}")
    for part in ("train_config", "model_config", "history", "extra"):
        _part(isinstance(ckpt[part], dict), path, part, ckpt[part], "a dict")
    history = ckpt["history"]
    _part(all(isinstance(history.get(k, []), list) for k in ("train_losses", "val_losses"))
          and isinstance(history.get("tokens_seen", 0), int), path, "history", history,
          "{'train_losses': list, 'val_losses': list, 'tokens_seen': int}")
    tensors = [(f"model/{n}", t) for n, t in ckpt["model"].items()]
    if opt is not None:
        tensors += [(f"optimizer/state/{i}/{k}", t) for i, st in opt["state"].items()
                    for k, t in st.items() if isinstance(t, torch.Tensor)]
    for name, t in tensors:
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"{path}: tensor {name} holds NaN or inf; a checkpoint must be finite")


def _diff(saved, current, ignore=()):
    keys = sorted((set(saved) | set(current)) - set(ignore))
    return [f"{k}: checkpoint {saved.get(k, '<absent>')!r}, here {current.get(k, '<absent>')!r}"
            for k in keys if saved.get(k, "<absent>") != current.get(k, "<absent>")]


def _check_model(ckpt, model, path):
    problems = _diff(ckpt["model_config"], config_dict(getattr(model, "config", None)))
    if problems:
        raise ValueError(f"{path}: model config differs: {'; '.join(problems)}")
    expected = {n: tuple(t.shape) for n, t in _model_state(model, ckpt["trainable_only"]).items()}
    got = {n: tuple(t.shape) for n, t in ckpt["model"].items()}
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    shapes = [f"{n}: checkpoint {got[n]}, model {expected[n]}" for n in sorted(set(got) & set(expected))
              if got[n] != expected[n]]
    if missing or unexpected or shapes:
        raise ValueError(f"{path}: model weights do not fit: missing {missing[:8]}, unexpected {unexpected[:8]}, "
                         f"shape mismatches {shapes[:8]}")


def _check_optimizer(ckpt, optimizer, path):
    saved = ckpt["optimizer"]
    if saved is None:
        raise ValueError(f"{path}: checkpoint has no optimizer state to resume from")
    groups = [g["params"] for g in optimizer.param_groups]
    sizes = [len(g["params"]) for g in saved["param_groups"]]
    if sizes != [len(g) for g in groups]:
        raise ValueError(f"{path}: optimizer param groups of sizes {sizes}, this optimizer has {[len(g) for g in groups]}")
    params = [p for g in groups for p in g]
    for i, state in saved["state"].items():
        for name, t in state.items():
            if not 0 <= i < len(params) or (t.dim() and t.shape != params[i].shape):
                raise ValueError(f"{path}: optimizer state {name!r} of parameter {i} does not fit this model")


def _check_rng(ckpt, generator, rank, world_size, path):
    rng = ckpt["rng"]
    if rng is None or rng.get("batch") is None:
        raise ValueError(f"{path}: checkpoint has no RNG states to resume from")
    if len(rng["torch"]) != world_size:
        raise ValueError(f"{path}: written by {len(rng['torch'])} process(es), this run has {world_size}; "
                         "resume with the same number of processes")
    if rng["batch"].shape != generator.get_state().shape or rng["torch"][rank].shape != torch.get_rng_state().shape:
        raise ValueError(f"{path}: RNG states have the wrong size")


def load_checkpoint(source, model, optimizer=None, *, train_config=None, free_fields=(), generator=None,
                    rank=0, world_size=1):
    """Validate a checkpoint fully, then load it into model (and optimizer, RNG states).

    Args:
        source: file or a run's output folder, or a dict from read_checkpoint (saves reading the file twice).
        model: bare model to load into; its config must equal the checkpoint's.
        optimizer: loaded when given; its param groups must have the checkpoint's layout.
        train_config: when given, every field except `free_fields` must equal the checkpoint's.
        generator: when given, the batch generator, torch CPU RNG (this rank's) and CUDA RNG are restored.
        rank, world_size: this process's place in a distributed run.
    Returns:
        The checkpoint dict (step, history, extra, ...).
    Raises:
        FileNotFoundError: no file.
        ValueError: truncated/corrupted file, or anything that does not match; nothing is loaded then.
    """
    ckpt = source if isinstance(source, dict) else read_checkpoint(source)
    path = "checkpoint" if isinstance(source, dict) else checkpoint_path(source)
    _check_model(ckpt, model, path)
    if train_config is not None:
        problems = _diff(ckpt["train_config"], config_dict(train_config), ignore=free_fields)
        if problems:
            raise ValueError(f"{path}: training config differs: {'; '.join(problems)}")
    if optimizer is not None:
        _check_optimizer(ckpt, optimizer, path)
    if generator is not None:
        _check_rng(ckpt, generator, rank, world_size, path)
    # everything checked: now change state
    model.load_state_dict(ckpt["model"], strict=not ckpt["trainable_only"])
    if optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if generator is not None:
        generator.set_state(ckpt["rng"]["batch"])
        torch.set_rng_state(ckpt["rng"]["torch"][rank])
        cuda = ckpt["rng"]["cuda"][rank]
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    return ckpt
