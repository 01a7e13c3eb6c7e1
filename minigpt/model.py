"""MiniGPT: a GPT-2-compatible decoder-only transformer in plain PyTorch.

Module names are exactly GPT-2's (transformer.wte, transformer.h.0.attn.c_attn, ...), so real GPT-2
weights load with a transpose of the Conv1D matrices and LoRA targets/adapter keys line up with PEFT's.
Unlike GPT-2's Conv1D, every projection here is an nn.Linear, so its weight is (d_out, d_in); in
memory the blocks' weights keep Conv1D's order (see Note: Weight layout in minigpt/weight_layout.py).

Shape legend:
    B  batch size            T  sequence length (<= block_size)
    C  n_embd                nh n_head            hs head size = C // nh
    V  vocab_size            L  tokens held by a KV cache (generation only)
"""

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lora.checks import check_bool, check_float, check_int
from minigpt import generation
from minigpt.device import memory_bytes
from minigpt.weight_layout import store_gpt_weights_transposed


@dataclass
class GPTConfig:
    vocab_size: int = 50257  # GPT-2's BPE vocabulary; 256 for the byte-level tokenizer
    block_size: int = 1024   # longest context the position table covers
    n_layer: int = 12        # transformer blocks
    n_head: int = 12         # attention heads per block
    n_embd: int = 768        # residual stream width C
    dropout: float = 0.0     # on attention probabilities and residual branches; 0 for fine-tuning
    bias: bool = True        # biases in Linear and LayerNorm layers, as in GPT-2

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            check_int(f"GPTConfig.{name}", getattr(self, name))
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        check_float("GPTConfig.dropout", self.dropout, 0.0, 1.0, low_open=False)
        check_bool("GPTConfig.bias", self.bias)  # bias="false" is truthy: it would build biases

    @classmethod
    def from_preset(cls, name, **overrides):
        """A preset from PRESETS with some fields overridden, e.g. from_preset("gpt2", block_size=256)."""
        if name not in PRESETS:
            raise ValueError(f"unknown GPT preset {name!r}; choose one of {sorted(PRESETS)}")
        known = {f.name for f in fields(cls)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ValueError(f"unknown GPTConfig field(s) {bad}; fields are {sorted(known)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS = {
    # the GPT-2 family (Radford et al., 2019): 124M, 350M, 774M, 1558M parameters
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=1024),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, vocab_size=50257, block_size=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, vocab_size=50257, block_size=1024),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600, vocab_size=50257, block_size=1024),
    # nanoGPT's documented laptop-CPU character model (4 layers, 4 heads, 128 wide, block 64)
    "cpu-char": dict(n_layer=4, n_head=4, n_embd=128, vocab_size=256, block_size=64),
    # the offline base of the fine-tuning course: byte-level, small enough to pretrain in minutes on a CPU
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, vocab_size=256, block_size=128),
    # for unit tests
    "test": dict(n_layer=2, n_head=2, n_embd=16, vocab_size=64, block_size=16),
}


def parameter_count(config):
    """Parameters of GPT(config) from the config alone (lm_head is wte's matrix: counted once)."""
    C, b = config.n_embd, int(config.bias)
    block = 12 * C * C + b * 9 * C + 2 * C * (1 + b)  # c_attn 3C², attn.c_proj C², c_fc 4C², mlp.c_proj 4C²; biases; ln_1, ln_2
    return (config.vocab_size + config.block_size) * C + config.n_layer * block + C * (1 + b)  # wte, wpe, h, ln_f


def check_allocatable(config):
    """Refuse, before allocating anything, a config whose parameters alone exceed the memory of the
    device they would be made on (torch's default device and dtype); a meta device holds no data."""
    device, dtype = torch.get_default_device(), torch.get_default_dtype()
    if device.type == "meta":
        return
    n = parameter_count(config)
    need, have = n * dtype.itemsize, memory_bytes(device)
    if have is not None and need > have:
        raise ValueError(f"{config}: {n:,} parameters need {need:,} bytes in {dtype}, more than the {have:,} bytes "
                         f"of memory on {device.type}; choose smaller sizes")


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head, self.dropout = config.n_head, config.dropout
        # q, k, v fused, as in GPT-2
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, cache=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # (B, T, 3C) -> 3 x (B, T, C)
        # (B, T, C) -> (B, nh, T, hs)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:  # generation: attend to the cached positions too; (B, nh, T, hs) -> (B, nh, L, hs)
            k, v = cache.append(k, v)
        # softmax(q k^T / sqrt(hs) + causal mask) v, fused; (B, nh, T, hs) -> (B, nh, T, hs)
        # (a single new token may see every cached position: no mask; minigpt.kv_cache takes several only when empty)
        causal = cache is None or T > 1
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=causal)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        C = config.n_embd
        self.c_fc = nn.Linear(C, 4 * C, bias=config.bias)  # (B, T, C) -> (B, T, 4C)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2 used the tanh approximation of GELU
        self.c_proj = nn.Linear(4 * C, C, bias=config.bias)  # (B, T, 4C) -> (B, T, C)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x))."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise ValueError(f"GPT needs a GPTConfig, got {type(config).__name__}")
        check_allocatable(config)
        self.config = config
        self.gradient_checkpointing = False  # recompute each block's activations in backward to save memory
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        store_gpt_weights_transposed(self)  # GPT-2's Conv1D order in memory; see Note: Weight layout
        # weight tying (Press & Wolf, 2017), as in GPT-2: the output head reuses the token embedding
        self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2 scales the residual projections by 1/sqrt(2 * n_layer): each block adds two of them to the stream
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self):
        """Number of distinct parameters (the tied lm_head/wte matrix counted once)."""
        return sum(p.numel() for p in self.parameters())

    def set_gradient_checkpointing(self, enabled=True):
        self.gradient_checkpointing = bool(enabled)
        return self

    def forward(self, idx, targets=None):
        """(B, T) token ids -> (logits (B, T, V), mean cross-entropy or None).

        Targets equal to -1 are ignored by the loss (padding, or positions with no next token).
        Raises:
            ValueError: idx or targets not a (B, T) integer tensor, targets of another shape than idx,
                or T of 0 or above block_size. Ids in [0, vocab_size) are the caller's promise, kept
                where ids enter (minigpt.token_ids): get_batch, generate and the evaluator check them.
        """
        self._check_ids(idx, "idx")
        if targets is not None:
            self._check_ids(targets, "targets", like=idx)
            targets = targets.long()  # cross_entropy wants int64 class indices
        B, T = idx.shape
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.h:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, C) -> (B, T, V)
        if targets is None:
            return logits, None
        # the loss is computed in float32 even when the forward ran under bf16 autocast
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def _check_ids(self, idx, name, like=None):
        """idx must be a (B, T) int64/int32 tensor (of `like`'s shape) with 1 <= T <= block_size.

        The ids' values are not read here (a host sync on every step): they are checked where they
        enter, by minigpt.token_ids.check_token_ids (generate, get_batch, the evaluator).
        """
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype not in (torch.long, torch.int32):
            got = f"{tuple(idx.shape)} {idx.dtype}" if isinstance(idx, torch.Tensor) else type(idx).__name__
            raise ValueError(f"{name} must be a (B, T) tensor of int64 token ids, got {got}")
        if like is not None and idx.shape != like.shape:
            raise ValueError(f"{name} shape {tuple(idx.shape)} must equal idx shape {tuple(like.shape)}")
        T = idx.size(1)
        if T > self.config.block_size:
            raise ValueError(f"{name}: sequence length {T} exceeds block_size {self.config.block_size}")
        if T == 0:
            raise ValueError(f"{name} of shape {tuple(idx.shape)} holds no tokens; give at least one per row")

    def forward_cached(self, idx, cache):
        """Generation's forward: (B, T) new ids at positions cache.length... -> logits (B, V) of the last one.

        Each layer appends its keys and values to `cache` (a minigpt.kv_cache.KVCache) and attends to
        everything cached. Only the last position's logits are computed: nothing else is sampled from.
        """
        T = idx.size(1)
        if cache.length + T > self.config.block_size:
            raise ValueError(f"positions up to {cache.length + T} exceed block_size {self.config.block_size}")
        pos = torch.arange(cache.length, cache.length + T, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block, layer_cache in zip(self.transformer.h, cache.layers, strict=True):
            x = block(x, layer_cache)
        return self.lm_head(self.transformer.ln_f(x[:, -1, :]))  # (B, C) -> (B, V)

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None, use_cache=True,
                 window_keep=None):
        """Append max_new_tokens sampled tokens to idx (B, T) and return (B, T + max_new_tokens).

        temperature 0 means greedy decoding; top_k keeps only the k most likely tokens. Pass a
        torch.Generator (on idx's device) for a reproducible sample. use_cache=False re-runs the whole
        context for every token (slower, the same tokens). When the context outgrows block_size the
        window restarts at the newest window_keep tokens (default block_size // 2; block_size crops
        on every step, as nanoGPT does): see minigpt.kv_cache. The model is put in eval mode for the
        call and returned to its previous mode afterwards.

        Raises:
            ValueError: idx not a tensor of int64/int32 token ids, not (B, T) with B, T >= 1, an id outside the vocabulary, or a bad setting
                (max_new_tokens < 0, temperature < 0, not finite or in (0, 1e-6), top_k < 1,
                window_keep outside [1, block_size], a generator that is not a torch.Generator on
                idx's device type), each named, before the first forward pass.
        """
        was_training = self.training
        self.eval()
        try:
            # inference mode: no autograd bookkeeping at all (about 10% of a tiny model's step)
            with torch.inference_mode():
                out = generation.generate(self, idx, max_new_tokens, temperature, top_k, generator, use_cache,
                                          window_keep)
        finally:
            self.train(was_training)
        return out.clone()  # an ordinary tensor: an inference-mode one could not be used by a later backward
