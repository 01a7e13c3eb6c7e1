"""minigpt: a GPT-2-compatible GPT from scratch, with tokenizers, data, training, sampling and fine-tuning.

Importing it sets two environment variables, GOMP_SPINCOUNT=1000 and OMP_WAIT_POLICY=PASSIVE, unless
you set either yourself: idle OpenMP threads then spin briefly and sleep, so a busy laptop does not slow
every step down many times over. It is the package's one side effect, and it has to happen here,
before torch is first imported. See Note: OpenMP wait policy in minigpt/threads.py.
"""

from minigpt.threads import choose_wait_policy

choose_wait_policy()  # see the module docstring: before anything below imports torch

from minigpt.data import encode_text, get_batch, load_tiny_shakespeare, split_train_val, tiny_shakespeare_path
from minigpt.download import cache_dir, data_dir
from minigpt.model import GPT, PRESETS, GPTConfig
from minigpt.pretrained import load_pretrained, save_pretrained
from minigpt.tokenizer import ByteTokenizer, CharTokenizer, GPT2Tokenizer, get_tokenizer

__all__ = ["GPT", "GPTConfig", "PRESETS"]
__all__ += ["encode_text", "get_batch", "load_tiny_shakespeare", "split_train_val", "tiny_shakespeare_path",
            "cache_dir", "data_dir", "load_pretrained", "save_pretrained",
            "ByteTokenizer", "CharTokenizer", "GPT2Tokenizer", "get_tokenizer"]
