"""The one check of token ids, made where ids enter: a prompt (generate), a batch (get_batch), validation data.

GPT.forward itself checks only what is free to check (shapes, dtype, the sequence length, as nanoGPT
asserts it): reading the ids' min and max back on every forward pass would cost a host sync on a
GPU and a graph break under torch.compile, on every step. Ids made by our own tokenizers are in range
by construction; ids from anywhere else pass through one of the doors below first.
"""

import torch


def check_token_ids(ids, vocab_size, name="ids", ignore=None):
    """`ids` must be an integer tensor whose every entry is in [0, vocab_size) (or equals `ignore`).

    Raises:
        ValueError: not an integer tensor, an id outside the vocabulary (the message gives it), or,
            with `ignore`, every entry ignored (a mean loss over no tokens).
    """
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        got = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"{name} must be a tensor of integer token ids, got {got}")
    if ids.numel() == 0:
        return ids
    lo, hi = int(ids.min()), int(ids.max())
    if ignore is not None and lo == hi == ignore:
        raise ValueError(f"{name}: every entry is {ignore} (ignored), so the mean loss is over no tokens")
    if (lo < 0 and lo != ignore) or hi >= vocab_size:
        bad = hi if hi >= vocab_size else lo
        allowed = f"[0, {vocab_size})" + ("" if ignore is None else f" or {ignore} (ignored)")
        raise ValueError(f"{name}: token id {bad} is outside the vocabulary {allowed}")
    return ids
