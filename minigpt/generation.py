"""Autoregressive generation for GPT.generate: argument checks, the next-token rule and the decoding loop.

With the cache (the default), the prompt's window goes through the model once (the prefill), then each
step feeds only the newest token; without it, each step re-runs the whole window, as nanoGPT does. Both
follow minigpt.kv_cache.window_start when the context outgrows block_size, and both draw from the
generator in the same order, so they return the same tokens.

A prompt longer than block_size is accepted with or without the cache: its last block_size tokens are
the first window, as nanoGPT crops its context.

Every argument is checked before the first forward pass, the generator included: a bad setting is a
ValueError naming it, never an error from inside torch.multinomial half-way through a sample.

Shape legend: B batch size, T tokens so far, V vocab size.
"""

import torch
import torch.nn.functional as F

from lora.checks import check_bool, check_float, check_int
from minigpt.kv_cache import KVCache, window_start
from minigpt.token_ids import check_token_ids


def check_prompt(idx, vocab_size):
    """idx must be a (B, T) tensor of int64/int32 token ids in [0, vocab_size), with B, T >= 1."""
    if not isinstance(idx, torch.Tensor):
        raise ValueError(f"idx must be a (B, T) tensor of token ids, got {type(idx).__name__}")
    if idx.dtype not in (torch.long, torch.int32):
        raise ValueError(f"idx must hold int64 or int32 token ids, got dtype {idx.dtype}")
    if idx.dim() != 2:
        raise ValueError(f"idx must be a (B, T) tensor of token ids, got shape {tuple(idx.shape)}")
    if idx.size(0) == 0 or idx.size(1) == 0:
        raise ValueError(f"idx has shape {tuple(idx.shape)}: give at least one prompt of at least one token")
    check_token_ids(idx, vocab_size, "idx")


# The smallest temperature above 0. Sampling divides float32 logits by it, and below about 1e-38 /
# |logit| the quotient overflows to inf and softmax returns NaN. Long before that the distribution is
# one-hot: at 1e-6 two logits 1e-4 apart already differ by a factor e^100. So anything smaller is
# refused, and the user is pointed to temperature 0, which is greedy decoding without any division.
MIN_TEMPERATURE = 1e-6


def check_sampling(max_new_tokens, temperature, top_k):
    """The settings a sample needs from its caller, checked; returns (max_new_tokens, temperature, top_k)."""
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, least=0)
    temperature = check_float("temperature", temperature, 0.0, low_open=False)
    if 0 < temperature < MIN_TEMPERATURE:
        raise ValueError(f"temperature={temperature!r}: use 0 for greedy decoding, or at least {MIN_TEMPERATURE:g} "
                         "(below that, logits / temperature can overflow, and the sample is greedy anyway)")
    top_k = None if top_k is None else check_int("top_k", top_k)
    return max_new_tokens, temperature, top_k


def check_generator(generator, device):
    """generator must be None or a torch.Generator on `device`'s type (where torch.multinomial draws)."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator={generator!r}: must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but the tokens are on {device}: "
                         f"make it with torch.Generator(device={device.type!r})")


def check_settings(max_new_tokens, temperature, top_k, use_cache, window_keep, block_size):
    """The sampling settings, checked; returns (max_new_tokens, temperature, top_k, use_cache, window_keep)."""
    max_new_tokens, temperature, top_k = check_sampling(max_new_tokens, temperature, top_k)
    use_cache = check_bool("use_cache", use_cache)
    if window_keep is None:
        window_keep = max(1, block_size // 2)
    window_keep = check_int("window_keep", window_keep)
    if window_keep > block_size:
        raise ValueError(f"window_keep={window_keep}: must be at most block_size={block_size}")
    return max_new_tokens, temperature, top_k, use_cache, window_keep


def next_token_probs(logits, temperature, top_k):
    """(B, V) logits -> (B, V) probabilities softmax(logits / temperature), kept to the top_k most
    likely tokens (ties with the k-th are kept too) and renormalised; temperature > 0."""
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return F.softmax(logits, dim=-1)


def next_token(logits, temperature, top_k, generator):
    """(B, V) logits of the last position -> (B, 1) next ids: argmax at temperature 0, else a sample
    from next_token_probs."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = next_token_probs(logits, temperature, top_k)
    return torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)


def generate(model, idx, max_new_tokens, temperature, top_k, generator, use_cache, window_keep):
    """Append max_new_tokens tokens to idx (B, T); returns (B, T + max_new_tokens). Checks come first."""
    block_size = model.config.block_size
    check_prompt(idx, model.config.vocab_size)
    max_new_tokens, temperature, top_k, use_cache, keep = check_settings(
        max_new_tokens, temperature, top_k, use_cache, window_keep, block_size)
    check_generator(generator, idx.device)
    start = max(0, idx.size(1) - block_size)  # the window is idx[:, start:]
    cache = KVCache(model.config.n_layer, min(block_size, idx.size(1) + max_new_tokens)) if use_cache else None
    for _ in range(max_new_tokens):
        new_start = window_start(idx.size(1), start, block_size, keep)
        if cache is not None:
            if new_start != start:  # the window slid: every position moved, so the cache is stale
                cache.reset()
            feed = idx[:, new_start:] if cache.length == 0 else idx[:, -1:]  # prefill, or the newest token
            logits = model.forward_cached(feed, cache)  # (B, V)
        else:
            logits = model(idx[:, new_start:])[0][:, -1, :]  # (B, T, V) -> (B, V)
        start = new_start
        idx = torch.cat((idx, next_token(logits.float(), temperature, top_k, generator)), dim=1)
    return idx
