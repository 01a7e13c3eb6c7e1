"""minigpt: a GPT-2-compatible GPT from scratch, with tokenizers, data, training, sampling and fine-tuning."""

from minigpt.threads import choose_wait_policy

# before anything below imports torch: OpenMP reads how to wait once, when torch loads it (minigpt.threads)
choose_wait_policy()

from minigpt.data import encode_text, get_batch, load_tiny_shakespeare, split_train_val, tiny_shakespeare_path
from minigpt.download import cache_dir, data_dir
from minigpt.model import GPT, PRESETS, GPTConfig
from minigpt.pretrained import load_pretrained, save_pretrained
from minigpt.tokenizer import ByteTokenizer, CharTokenizer, GPT2Tokenizer, get_tokenizer

__all__ = ["GPT", "GPTConfig", "PRESETS"]
__all__ += ["encode_text", "get_batch", "load_tiny_shakespeare", "split_train_val", "tiny_shakespeare_path",
            "cache_dir", "data_dir", "load_pretrained", "save_pretrained",
            "ByteTokenizer", "CharTokenizer", "GPT2Tokenizer", "get_tokenizer"]
