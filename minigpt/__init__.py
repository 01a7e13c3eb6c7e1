"""minigpt: a GPT-2-compatible GPT from scratch, with tokenizers, data, training, sampling and fine-tuning."""

from minigpt.model import GPT, PRESETS, GPTConfig

__all__ = ["GPT", "GPTConfig", "PRESETS"]
