"""Helpers shared by several test modules (plain functions; fixtures live in conftest.py)."""

import copy
import random

import torch

from minigpt.model import GPT, GPTConfig

V = 64  # the "test" preset's vocabulary
# settings for training runs of a few steps on tiny_gpt() and corpus()
FAST = dict(batch_size=4, block_size=16, eval_batches=2, warmup_steps=2, lr=1e-2, min_lr=1e-3, progress=False)


def corpus(n=3000):
    """Token ids where next token = this token + 7 (mod 64): learnable from one token of context."""
    return (torch.arange(n) * 7 % V).long()


def words_text(seed, n_words):
    """Seeded text of n_words words from a small play-like vocabulary, one line."""
    rng = random.Random(seed)
    words = "the king and queen of rome shall speak to thee my lord good night what say you".split()
    return " ".join(rng.choice(words) for _ in range(n_words)) + "\n"


def write_fine_tune_texts(root):
    """A base corpus and a "play" to fine-tune on in `root` (corpus.txt, play.txt); the shift is upper case."""
    (root / "corpus.txt").write_text(words_text(0, 3000), encoding="utf-8")
    (root / "play.txt").write_text(words_text(1, 6000).upper(), encoding="utf-8")
    return root


def tiny_gpt(seed=0, **overrides):
    """A seeded MiniGPT of the "test" preset (config fields can be overridden)."""
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_preset("test", **overrides))


def snapshot(model):
    """Everything a failed call must leave as it was: tensors, module types, trainable flags, adapter
    configs and which adapters are active or merged on each layer."""
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: type(m) for n, m in model.named_modules()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        copy.deepcopy(getattr(model, "lora_configs", None)),
        {n: (list(m.active_adapters), list(m.merged_adapters)) for n, m in model.named_modules() if hasattr(m, "merged_adapters")},
    )


def assert_unchanged(model, before):
    """The model equals the snapshot `before`, tensor for tensor and flag for flag."""
    state, types, flags, config, adapters = snapshot(model)
    assert types == before[1] and flags == before[2] and config == before[3] and adapters == before[4]
    assert state.keys() == before[0].keys()
    assert all(torch.equal(state[k], before[0][k]) for k in state)
