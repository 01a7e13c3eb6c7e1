"""Bug in window_start (minigpt.kv_cache): the window slides one token early, when the context holds
exactly block_size tokens, which still fit the position embeddings."""


def window_start(length, start, block_size, keep):
    return start if length - start < block_size else length - keep
