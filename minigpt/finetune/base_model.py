"""The model a fine-tuning run starts from: real GPT-2, or a tiny byte-level GPT pretrained once here.

    gpt2, gpt2-medium, ...   GPT-2's weights (minigpt.load_pretrained), GPT-2's BPE tokenizer
    a folder                 any GPT-2-layout folder (config.json + model.safetensors), GPT-2's BPE
    tiny                     a byte-level MiniGPT pretrained on the Python docs (minigpt.finetune.corpus) or on
                             a text file of yours, then cached: cache_dir()/bases/<key>/
    scratch                  the tiny architecture at its random initialisation (the no-pretraining baseline)

The tiny base knows English (of a technical sort) but has never seen a play, so fine-tuning on
Shakespeare visibly changes what it writes. The cache key hashes everything that determines its
weights: the corpus' sha256, the architecture and the pretraining recipe. It is built in a temporary
folder and renamed into place, so a crash never leaves a half-written base that later runs would trust.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import time

import torch

from lora.io.files import temp_dir
from minigpt.data import encode_text, split_train_val
from minigpt.download import cache_dir
from minigpt.finetune.corpus import read_corpus_file, sha256_text, stdlib_corpus
from minigpt.model import GPT, GPTConfig
from minigpt.pretrained import GPT2_NAMES, config_from_hf, load_pretrained, save_pretrained
from minigpt.tokenizer import get_tokenizer
from minigpt.trainer import TrainConfig, train

TINY, SCRATCH = "tiny", "scratch"
KEY_VERSION = 1  # bump when the recipe below changes in a way the key does not capture
PRETRAIN_FRACTION = 0.95  # the first 95% of the corpus is pretrained on; the rest only measures the base


@dataclasses.dataclass
class BaseRecipe:
    """How the tiny base is pretrained; every field is part of its cache key."""
    preset: str = "tiny"        # GPTConfig preset (the vocabulary is always 256 bytes)
    steps: int = 800            # optimizer steps of pretraining
    batch_size: int = 16        # sequences per step, each of the preset's block_size bytes
    lr: float = 2e-3            # peak learning rate (warm-up, cosine decay to lr / 10)
    seed: int = 1337
    corpus: str | None = None   # a text file; None = the Python docs (minigpt.finetune.corpus.stdlib_corpus)


def is_gpt2(base):
    """True for a GPT-2 name or a folder (both use GPT-2's tokenizer)."""
    return base in GPT2_NAMES or base not in (TINY, SCRATCH)


def base_config(base, recipe):
    """The GPTConfig of `base` without loading any weights (for validation before work starts).

    Raises:
        ValueError: an unknown base, or a folder without a readable config.json.
    """
    if base in (TINY, SCRATCH):
        return GPTConfig.from_preset(recipe.preset, vocab_size=256)
    if base in GPT2_NAMES:
        return GPTConfig.from_preset(base)
    path = pathlib.Path(base).expanduser() / "config.json"
    if not path.is_file():
        raise ValueError(f"base={base!r}: choose {TINY!r}, {SCRATCH!r}, one of {list(GPT2_NAMES)}, "
                         "or a folder holding config.json and model.safetensors")
    try:
        return config_from_hf(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"base={base!r}: {path} is not a GPT-2 config ({e})") from None


def base_tokenizer(base):
    """Bytes for the tiny bases, GPT-2's BPE for everything else."""
    return get_tokenizer("gpt2" if is_gpt2(base) else "byte")


def corpus_text(recipe):
    """The pretraining text of `recipe` (ValueError for an empty or non-text file)."""
    return stdlib_corpus() if recipe.corpus is None else read_corpus_file(recipe.corpus)


def cache_key(corpus_sha256, config, recipe):
    """Hex digest naming the cached base: corpus, architecture and recipe (the corpus path is not part of it)."""
    fields = dataclasses.asdict(recipe)
    fields.pop("corpus")
    blob = json.dumps({"v": KEY_VERSION, "corpus": corpus_sha256, "config": dataclasses.asdict(config),
                       "recipe": fields}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def pretrain(text, config, recipe, device="auto", progress=True):
    """A fresh GPT(config) trained on `text` (bytes) by `recipe`; returns (model, TrainResult)."""
    ids = encode_text(get_tokenizer("byte"), text)
    train_ids, val_ids = split_train_val(ids, PRETRAIN_FRACTION)  # a small held-out part, only to report the base's loss
    if len(val_ids) <= config.block_size:  # a short corpus: report the loss on the training text
        val_ids = train_ids
    torch.manual_seed(recipe.seed)
    model = GPT(config)
    cfg = TrainConfig(steps=recipe.steps, batch_size=recipe.batch_size, lr=recipe.lr, min_lr=recipe.lr / 10,
                      warmup_steps=min(100, recipe.steps // 10), eval_interval=0, eval_batches=10,
                      seed=recipe.seed, device=device, progress=progress, progress_desc="pretraining the tiny base")
    result = train(model, train_ids, val_ids, cfg)
    return model.cpu(), result


def heldout_corpus_ids(recipe):
    """The byte ids of the tiny base's corpus that pretraining never trained on: its last 5%, (M,) int64.

    pretrain() measures the base's loss on them and nothing else, so after fine-tuning they tell how
    much of what the base knew is forgotten (Biderman et al., 2024, "LoRA Learns Less and Forgets Less").
    """
    ids = encode_text(get_tokenizer("byte"), corpus_text(recipe))
    return split_train_val(ids, PRETRAIN_FRACTION)[1]


def tiny_base_folder(recipe, root=None, text=None):
    """The cache folder of the tiny base of `recipe` (it may not exist yet); `text`: its corpus, if read already."""
    text = corpus_text(recipe) if text is None else text
    return pathlib.Path(root or cache_dir()) / "bases" / cache_key(sha256_text(text), base_config(TINY, recipe), recipe)


def is_cached(folder):
    """True when the base in `folder` is complete: base.json is written last."""
    return (folder / "base.json").is_file()


def tiny_base(recipe, device="auto", root=None, progress=True):
    """The tiny pretrained base for `recipe`: read from the cache, or pretrained now and cached.

    Args:
        recipe: BaseRecipe.
        device: where pretraining runs when the base is not cached.
        root: cache folder; default minigpt.download.cache_dir().
        progress: show the pretraining progress bar.
    Returns:
        (model on the CPU, info dict: path, cached, corpus_sha256, corpus_chars, pretrain_seconds,
        pretrain_val_loss).
    Raises:
        ValueError: an empty or non-text corpus file (before anything is written).
    """
    text = corpus_text(recipe)
    config, sha = base_config(TINY, recipe), sha256_text(text)
    folder = tiny_base_folder(recipe, root, text)
    if is_cached(folder):  # written last: its presence means the folder is complete
        info = json.loads((folder / "base.json").read_text(encoding="utf-8"))
        return load_pretrained(folder), dict(info, path=str(folder), cached=True)
    t0 = time.perf_counter()
    model, result = pretrain(text, config, recipe, device, progress)
    info = {"corpus_sha256": sha, "corpus_chars": len(text), "recipe": dataclasses.asdict(recipe),
            "pretrain_seconds": time.perf_counter() - t0, "pretrain_val_loss": result.final_val_loss}
    _publish(folder, model, info)
    return model, dict(info, path=str(folder), cached=False)


def _publish(folder, model, info):
    """Write the base into a temporary sibling folder, then rename it to `folder` in one step."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(folder.parent, folder.name)
    try:
        save_pretrained(model, tmp)
        (tmp / "base.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        os.rename(tmp, folder)
    except OSError:
        if not (folder / "base.json").is_file():  # not a concurrent run that finished first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_base(base, recipe, device="auto", root=None, progress=True):
    """The base model of a fine-tuning run and what it is.

    Returns:
        (model on the CPU, info dict with at least "base", "path" and "cached").
    Raises:
        ValueError: unknown base or bad corpus.
    """
    if base == TINY:
        model, info = tiny_base(recipe, device, root, progress)
    elif base == SCRATCH:
        torch.manual_seed(recipe.seed)
        model, info = GPT(base_config(SCRATCH, recipe)), {"path": None, "cached": False}
    else:
        base_config(base, recipe)  # the same error for a bad name whether or not it is loaded
        root = pathlib.Path(root or cache_dir())
        info = {"path": str(base), "cached": base not in GPT2_NAMES or (root / base / "model.safetensors").is_file()}
        model = load_pretrained(base, cache_dir=root)
    return model, dict(info, base=base)

