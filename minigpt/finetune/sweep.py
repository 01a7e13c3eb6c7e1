"""Many short fine-tunes from one base, in memory: what a notebook needs to test a paper's claim.

`python -m minigpt.finetune` writes a run folder per configuration (pipeline.run_finetune); a sweep
of twenty runs of a few hundred steps needs none of those files, only the trained models and their
losses. A Sweep loads the base and the data once, trains each configuration on a deep copy of the
base with the pipeline's own pieces (validate, prepare_model, train_config, minigpt.trainer.train),
and keeps every run by its configuration: two sections asking for the same run get the same trained
model instead of training it twice.

    sweep = Sweep(FinetuneConfig(steps=200, batch_size=8, block_size=64), extra={"python docs": ids})
    r8 = sweep.run(rank=8)                       # a SweepRun: model, TrainResult, losses, ...
    plus = sweep.run(rank=8, lora_plus_ratio=16)  # LoRA+: B's learning rate 16 times A's

Shape legend: N training tokens, M validation tokens.
"""

import copy
import dataclasses

from lora import count_parameters, lora_plus_param_groups
from minigpt.device import pick_device
from minigpt.evaluate import estimate_loss
from minigpt.finetune.base_model import base_tokenizer, load_base
from minigpt.finetune.config import FinetuneConfig, recipe_of, validate
from minigpt.finetune.pipeline import load_data, prepare_model, train_config
from minigpt.trainer import train

BASE_FIELDS = ("base", "base_corpus", "base_preset", "base_steps", "data", "cache_dir")  # fixed per sweep
VAL = "val"  # the name of tiny Shakespeare's validation loss in SweepRun.losses


def in_memory_train_config(cfg):
    """train_config(cfg) with no files: no checkpoint, no metrics file (a validated FinetuneConfig)."""
    return dataclasses.replace(train_config(cfg), out=None, metrics_path=None, checkpoint_interval=0)


def finetune_in_memory(base, cfg, train_ids, val_ids, lora_plus_ratio=None, callback=None):
    """Fine-tune a deep copy of `base` by the validated `cfg`, writing nothing.

    Args:
        base: the base model (left unchanged).
        cfg: a validated FinetuneConfig (minigpt.finetune.validate).
        train_ids, val_ids: (N,), (M,) token ids.
        lora_plus_ratio: None, or B's learning rate over A's (LoRA+, lora.params.lora_plus_param_groups);
            A keeps cfg.lr. LoRA and QLoRA only.
        callback: minigpt.trainer.train's callback(step, metrics).
    Returns:
        (trained model, TrainResult).
    Raises:
        ValueError: lora_plus_ratio with method="full", or a bad ratio.
    """
    if lora_plus_ratio is not None and cfg.method == "full":
        raise ValueError("lora_plus_ratio sets the learning rate of LoRA's B; method='full' has no B")
    model, _ = prepare_model(copy.deepcopy(base), cfg)
    groups = None
    if lora_plus_ratio is not None:
        groups = lora_plus_param_groups(model, lr=cfg.lr, ratio=lora_plus_ratio, weight_decay=0.0)
    result = train(model, train_ids, val_ids, in_memory_train_config(cfg), param_groups=groups, callback=callback)
    return model, result


@dataclasses.dataclass
class SweepRun:
    """One trained configuration of a Sweep."""
    cfg: FinetuneConfig          # validated: lr, block_size filled in
    lora_plus_ratio: float | None
    model: object                # the trained model (LoRA layers not merged)
    result: object               # minigpt.trainer.TrainResult
    losses: dict                 # {"val": tiny Shakespeare's val loss, <extra name>: loss on that text}
    trainable_params: int

    @property
    def val_loss(self):
        return self.losses[VAL]


class Sweep:
    """One base and its data, loaded once; fine-tunes trained on demand and kept by configuration.

    Every run fine-tunes the base of the sweep's cfg: run() may change any field but those that choose
    the base or the data (BASE_FIELDS), and a run's seed sets its LoRA init and batches only (a
    FinetuneConfig's seed also names the tiny base's pretraining seed; here the base stays the sweep's).

    Args:
        cfg: the FinetuneConfig every run starts from (run() replaces some of its fields); its base,
            base recipe and data are loaded here. Nothing is ever written: no run folder, no checkpoint.
        extra: {name: (K,) token ids} more texts to measure every trained model on (e.g. the base's own
            held-out corpus, to see what fine-tuning forgets), with the runs' evaluation batches.
        data: (train ids (N,), val ids (M,)) already loaded by minigpt.finetune.load_data; None loads them.
    Raises:
        ValueError: a bad cfg (validate's messages).
    """

    def __init__(self, cfg, extra=None, data=None):
        self.cfg = dataclasses.replace(cfg, progress=False, overwrite=True)  # overwrite: no --out check, nothing written
        first = validate(self.cfg)
        self.device = pick_device(first.device)
        self.base, self.base_info = load_base(first.base, recipe_of(first), first.device, first.cache_dir, False)
        self.base.to(self.device)
        self.train_ids, self.val_ids = load_data(first, base_tokenizer(first.base)) if data is None else data
        self.extra = dict(extra or {})
        self.runs = {}  # key -> SweepRun

    def config(self, **changes):
        """The validated FinetuneConfig of the sweep's cfg with `changes` (the key runs are kept by)."""
        return validate(dataclasses.replace(self.cfg, **changes))

    def base_losses(self):
        """{"val": ..., <extra name>: ...}: the base's losses before any fine-tuning, on the runs' batches."""
        return self.losses(self.base, self.config())

    def losses(self, model, cfg, with_val=True):
        """The loss of `model` on tiny Shakespeare's validation text (unless not with_val) and on every extra text."""
        tc = in_memory_train_config(cfg)
        texts = {VAL: self.val_ids, **self.extra} if with_val else self.extra
        return {name: estimate_loss(model, ids, tc) for name, ids in texts.items()}

    def run(self, lora_plus_ratio=None, **changes):
        """The SweepRun of the sweep's cfg with `changes` (FinetuneConfig fields), trained now or kept from before.

        Raises:
            ValueError: a bad field or value (validate's messages), a field of BASE_FIELDS, or
                lora_plus_ratio with method="full".
        """
        fixed = sorted(set(changes) & set(BASE_FIELDS))
        if fixed:
            raise ValueError(f"{fixed}: a sweep fine-tunes one base on one data set; start another Sweep to change them")
        cfg = self.config(**changes)
        key = (tuple(sorted(dataclasses.asdict(cfg).items())), lora_plus_ratio)
        if key not in self.runs:
            model, result = finetune_in_memory(self.base, cfg, self.train_ids, self.val_ids, lora_plus_ratio)
            self.runs[key] = SweepRun(cfg=cfg, lora_plus_ratio=lora_plus_ratio, model=model, result=result,
                                      # the val loss train() measured last, on the same batches losses() uses
                                      losses={VAL: result.final_val_loss, **self.losses(model, cfg, with_val=False)},
                                      trainable_params=count_parameters(model)[0])
        return self.runs[key]
