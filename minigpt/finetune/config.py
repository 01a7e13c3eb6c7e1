"""The fine-tune's configuration: one dataclass, its defaults, and the checks run before any work starts.

Everything a run needs is decided here, once: `validate` fills in the defaults that depend on other
fields (learning rate, block size, output folder) and refuses every bad value, naming it, before a
file is written or a weight is loaded.
"""

import dataclasses
import functools
import os

import torch

from lora.checks import check_bool, check_choice, check_float, check_int
from lora.config import config_from_keywords, in_our_names
from lora.inject import plan_lora
from minigpt.cli import check_writable
from minigpt.device import DEVICES, pick_device
from minigpt.download import cache_dir
from minigpt.finetune.base_model import SCRATCH, TINY, BaseRecipe, base_config, corpus_text, is_cached, tiny_base_folder
from minigpt.finetune.impl import check_impl
from minigpt.finetune.rundir import check_out_dir
from minigpt.model import GPT, PRESETS
from minigpt.threads import user_threads
from minigpt.trainer import check_seed

METHODS = ("full", "lora", "qlora")
INITS = ("default", "gaussian", "pissa")
# peak learning rates, the best of a sweep on the tiny base (docs/results.md): LoRA's update B A starts
# at zero and lives in a rank-r subspace, so it needs a larger step than full fine-tuning
DEFAULT_LR = {"full": 1e-3, "lora": 5e-3, "qlora": 5e-3}
SCRATCH_LR = 1e-3  # nanoGPT's lr for its small character model trained from random weights


@dataclasses.dataclass
class FinetuneConfig:
    method: str = "lora"          # full | lora | qlora
    base: str = TINY              # tiny | scratch | gpt2 | gpt2-medium | gpt2-large | gpt2-xl | a folder
    base_corpus: str | None = None  # text file the tiny base is pretrained on; None = the Python docs
    base_preset: str = "tiny"     # architecture of the tiny base (a GPTConfig preset; vocabulary 256)
    base_steps: int = 800         # pretraining steps of the tiny base
    rank: int = 8                 # LoRA r
    alpha: float = 16.0           # LoRA alpha; the update is scaled by alpha / r
    dropout: float = 0.0          # LoRA dropout on the adapter's input
    targets: str = "all-linear"   # comma-separated module names, or every Linear of the blocks
    dora: bool = False            # DoRA: a trained magnitude per output row beside B A (lora and qlora)
    init: str = "default"         # default | gaussian | pissa: how A and B start (pissa: lora only)
    use_rslora: bool = False      # scale B A by alpha / sqrt(r) (rsLoRA) instead of alpha / r
    steps: int = 300              # optimizer steps of fine-tuning
    batch_size: int = 16          # sequences per step
    block_size: int | None = None  # tokens per sequence; None = min(128, the base's block size)
    lr: float | None = None       # peak learning rate; None = DEFAULT_LR[method] (SCRATCH_LR for scratch)
    device: str = "auto"          # auto | cpu | cuda | mps
    compile: bool = False         # torch.compile the model for training
    out: str | None = None        # output folder; None = runs/finetune-<method> (default_out)
    resume: bool = False          # continue the interrupted run in --out
    overwrite: bool = False       # replace a run of another configuration in --out
    seed: int = 1337              # batches, LoRA init, sampling
    eval_interval: int = 50       # evaluate (and checkpoint) every this many steps
    eval_batches: int = 20        # validation batches per evaluation
    data: str | None = None       # tiny Shakespeare's input.txt; None = found by minigpt.data
    prompt: str = "ROMEO:"        # sample prompt, before and after fine-tuning
    sample_tokens: int = 200      # tokens sampled after the prompt
    cache_dir: str | None = None  # cache of tiny bases and GPT-2 downloads; None = minigpt.download.cache_dir()
    progress: bool = True         # progress bars
    threads: int | None = None    # torch threads; None = $OMP_NUM_THREADS, else one per free core (minigpt.threads)
    impl: str | None = None       # train with the exercises' code: solutions | mine | a folder; None = the library

    @functools.cached_property
    def lora(self):
        """The run's LoraConfig, built (and checked) once per FinetuneConfig; validate() calls it first.

        Raises:
            ValueError: a bad rank, alpha, dropout, targets, dora, init or use_rslora, named as here.
        """
        try:
            return config_from_keywords(rank=self.rank, alpha=self.alpha, dropout=self.dropout, targets=self.targets,
                                        use_rslora=self.use_rslora, use_dora=self.dora, init=self.init)
        except ValueError as e:  # the keyword form's names, and this config's own name for DoRA
            raise ValueError(in_our_names(e, {"use_dora": "dora"})) from None


def method_label(cfg):
    """The method in a few words, for progress bars and headers: "full", "lora r=8", "qlora r=8 dora"."""
    if cfg.method == "full":
        return cfg.method
    extras = ["dora"] * cfg.dora + ([cfg.init] if cfg.init != "default" else []) + ["rslora"] * cfg.use_rslora
    return " ".join([f"{cfg.method} r={cfg.rank}", *extras])


def recipe_of(cfg):
    """The BaseRecipe of the tiny base `cfg` fine-tunes (its seed is the run's seed)."""
    return BaseRecipe(preset=cfg.base_preset, steps=cfg.base_steps, seed=cfg.seed, corpus=cfg.base_corpus)


def _check_values(cfg):
    """Every field but the LoRA settings, which FinetuneConfig.lora checks."""
    check_choice("method", cfg.method, METHODS)
    if cfg.base == SCRATCH and cfg.method != "full":
        raise ValueError(f"base='scratch' trains every weight from random init; use method='full', not {cfg.method!r}")
    check_choice("base_preset", cfg.base_preset, sorted(PRESETS))
    for name in ("base_steps", "steps", "batch_size", "eval_interval", "eval_batches", "sample_tokens"):
        check_int(name, getattr(cfg, name))
    check_seed("seed", cfg.seed)
    user_threads(cfg.threads)  # threads, and OMP_NUM_THREADS when threads is None
    if cfg.lr is not None:
        check_float("lr", cfg.lr)
    check_choice("device", cfg.device, DEVICES)
    if cfg.data is not None and not os.path.isfile(cfg.data):
        raise ValueError(f"data={cfg.data!r}: no such file; give a UTF-8 text file to fine-tune on")
    if not isinstance(cfg.prompt, str) or not cfg.prompt:
        raise ValueError(f"prompt={cfg.prompt!r}: give a non-empty prompt to sample from")
    check_choice("init", cfg.init, INITS)  # the fine-tune offers these three of lora.init's methods
    check_bool("dora", cfg.dora)
    check_bool("use_rslora", cfg.use_rslora)
    if cfg.method == "full" and (cfg.dora or cfg.init != "default" or cfg.use_rslora):
        raise ValueError("dora, init and use_rslora configure LoRA; method='full' trains every weight instead")
    if cfg.method == "qlora" and cfg.init == "pissa":
        raise ValueError("init='pissa' needs the float base weight; with method='qlora' the base is NF4 already "
                         "(use method='lora', or init='default' or 'gaussian')")
    check_impl(cfg)  # the exercises' code: a folder, plain LoRA (minigpt.finetune.impl); graded before training


def _check_base(cfg):
    """The base's GPTConfig, after checking the base, its corpus, the block size, rank and targets against it."""
    config = base_config(cfg.base, recipe_of(cfg))  # unknown base -> ValueError
    if cfg.base_corpus is not None:
        if cfg.base != TINY:
            raise ValueError(f"base_corpus is for base='tiny'; base={cfg.base!r} is already pretrained")
        try:
            corpus_text(recipe_of(cfg))  # empty or not text -> ValueError
        except FileNotFoundError:
            raise ValueError(f"base_corpus={cfg.base_corpus!r}: no such file; give a UTF-8 text file") from None
    if cfg.block_size is not None:
        check_int("block_size", cfg.block_size)
        if cfg.block_size > config.block_size:
            raise ValueError(f"block_size={cfg.block_size}: the base's position table holds at most {config.block_size}")
    if cfg.method != "full":
        with torch.device("meta"):  # the architecture only: no memory, no time
            skeleton = GPT(config)
        _check_untied(skeleton, plan_lora(skeleton, cfg.lora), cfg)  # the targets exist, r fits every layer
    return config


def _check_untied(skeleton, chosen, cfg):
    """Refuse targets whose weight is shared with another module (GPT-2's lm_head is wte's matrix).

    Such a run would train and then fail at the end: merging ΔW into a tied matrix unties it (or
    changes the embedding too), so merged/ cannot be saved in GPT-2's layout, and quantize_model
    refuses a tied weight for QLoRA. Better to say so before any work starts.
    """
    owners = {}
    for name, p in skeleton.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(name)
    for name, module, _, _ in chosen:
        shared = owners.get(id(module.weight), [])
        if len(shared) > 1:
            raise ValueError(f"targets={cfg.targets!r}: {name!r} shares its weight with {shared} (tied); the merged "
                             "model could not be saved and QLoRA cannot quantise it. Leave it out of --targets")


def default_out(cfg):
    """runs/finetune-<method>, and runs/finetune-<method>-impl-<name> for a run on the exercises' code
    (`--impl mine`: runs/finetune-lora-impl-mine), so that it never meets the library's own run."""
    name = f"finetune-{cfg.method}"
    if cfg.impl is not None:
        name += "-impl-" + (os.path.basename(os.path.normpath(cfg.impl)) or "folder")
    return os.path.join("runs", name)


def validate(cfg):
    """Check every field of `cfg` and fill in the defaults; writes nothing.

    Returns:
        a new FinetuneConfig with lr, block_size and out filled in.
    Raises:
        ValueError: naming the bad value and what is allowed: unknown method or base, a rank above
            the smallest targeted layer's width, non-positive sizes, a corpus that is empty or not
            text, an --out holding a run of another configuration, an unavailable device.
    """
    _check_values(cfg)
    lora = cfg.lora  # the LoRA settings, checked once here; the returned config carries the same object
    config = _check_base(cfg)
    lr = cfg.lr if cfg.lr is not None else (SCRATCH_LR if cfg.base == SCRATCH else DEFAULT_LR[cfg.method])
    cfg = dataclasses.replace(
        cfg, lr=float(lr), alpha=float(cfg.alpha), block_size=cfg.block_size or min(128, config.block_size),
        out=cfg.out if cfg.out is not None else default_out(cfg))
    cfg.__dict__["lora"] = lora  # cached_property's slot: the new config carries the checked LoraConfig, not a rebuild
    pick_device(cfg.device)  # cuda or mps asked for but absent -> ValueError
    check_out_dir(cfg)
    if cfg.base == TINY and not is_cached(tiny_base_folder(recipe_of(cfg), cfg.cache_dir)):  # pretrained, then cached
        check_writable("cache_dir", cfg.cache_dir or cache_dir(), folder=True)
    return cfg
