"""The key/value cache of autoregressive generation, and the rule for sliding the context window.

Without a cache, predicting token t+1 re-runs the whole context 0..t through every layer, although
the keys and values of tokens 0..t-1 are the same as in the step before: causal attention never lets
an earlier position see a later one. The cache keeps each layer's keys and values, so after one
forward over the prompt (the prefill) each step feeds only the newest token and attends to the cache.

The window: MiniGPT's position embeddings are learned and absolute (wpe covers positions 0..block_size-1).
When the context would outgrow block_size, keeping the cache is wrong: every token moves to a new
position, so its cached keys and values (computed with the old position embedding) no longer hold.
The window then slides and the cache is refilled by one prefill of the newest `keep` tokens.
keep = block_size re-prefills a full window on every step (nanoGPT's crop, no saving); the default
keep = block_size // 2 prefills half a window once every block_size // 2 + 1 new tokens, so each
prediction still sees at least half a window of context. Generation with and without the cache
follows the same rule, so both give the same tokens.

Shape legend:
    B  batch size        nh n_head        hs head size        T  new tokens in this call
    L  tokens cached (<= capacity <= block_size)
"""

def window_start(length, start, block_size, keep):
    """Where the context window starts once the sequence holds `length` tokens.

    The window [start, length) is kept while it fits in block_size; once it does not, it restarts
    at the newest `keep` tokens (see the module docstring).
    """
    return start if length - start <= block_size else length - keep


class LayerCache:
    """One attention layer's keys and values, in buffers of `capacity` positions allocated on first use."""

    def __init__(self, capacity):
        self.capacity = capacity  # most positions ever held (<= block_size)
        self.k = self.v = None    # (B, nh, capacity, hs) each
        self.length = 0           # positions filled, L

    def append(self, k, v):
        """Store k, v (B, nh, T, hs) after the cached positions; return all keys and values (B, nh, L, hs).

        Only an empty cache takes several tokens at once (the prefill): attention then masks causally
        within them, while a single new token may attend to every cached position.
        """
        B, nh, T, hs = k.shape
        if self.length and T > 1:
            raise ValueError(f"a cache holding {self.length} tokens takes one token at a time, got {T}")
        if self.length + T > self.capacity:
            raise ValueError(f"{self.length} cached + {T} new tokens exceed the cache's capacity {self.capacity}")
        if self.length == 0 and (self.k is None or self.k.shape != (B, nh, self.capacity, hs)
                                 or self.k.dtype != k.dtype or self.k.device != k.device):
            self.k = k.new_empty(B, nh, self.capacity, hs)
            self.v = v.new_empty(B, nh, self.capacity, hs)
        self.k[:, :, self.length:self.length + T] = k
        self.v[:, :, self.length:self.length + T] = v
        self.length += T
        return self.k[:, :, :self.length], self.v[:, :, :self.length]  # (B, nh, L, hs) views, no copy


class KVCache:
    """Every layer's LayerCache; the position of the next token is `length`."""

    def __init__(self, n_layer, capacity):
        self.layers = [LayerCache(capacity) for _ in range(n_layer)]

    @property
    def length(self):
        return self.layers[0].length

    @property
    def capacity(self):
        return self.layers[0].capacity

    def reset(self):
        """Forget every cached token (the buffers are reused by the next prefill)."""
        for layer in self.layers:
            layer.length = 0

    def nbytes(self):
        """Bytes held by the key and value buffers."""
        return sum(t.numel() * t.element_size() for layer in self.layers for t in (layer.k, layer.v) if t is not None)

