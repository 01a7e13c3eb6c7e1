"""Worked solution of notebooks/exercises/bug_lab.py: one property test per planted bug, each true of the library."""

import torch
import torch.nn as nn
import torch.nn.functional as F

import lora
from minigpt import GPT, GPTConfig


def tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("test"))


def make_B_nonzero(model):
    """B ≠ 0 in every adapter: at B = 0 every identity about ΔW holds trivially."""
    with torch.no_grad():
        for _, layer in lora.lora_layers(model):
            layer.lora_B.normal_(std=0.1)


def logits(model, idx):
    with torch.no_grad():
        return model(idx)[0]


def test_missing_scaling(impl):
    """The adapter adds (α/r)·B A x to the base output."""
    layer = impl.LoRALinear(nn.Linear(8, 6), 2, 4.0)
    with torch.no_grad():
        layer.lora_B.normal_()
        x = torch.randn(5, 8)
        want = layer.base(x) + (4.0 / 2) * (x @ layer.lora_A.T) @ layer.lora_B.T
        assert torch.allclose(layer(x), want, atol=1e-6)


def test_random_B_init(impl):
    """At initialisation the layer computes exactly its base: B = 0, so ΔW = 0."""
    layer = impl.LoRALinear(nn.Linear(8, 6), 2, 4.0)
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert torch.equal(layer(x), layer.base(x))


def test_dropout_after_A(impl):
    """Dropout zeroes input features one by one: with A = 1 (rank 1) and inputs 1, 2, 4, 8, the low-rank path
    sums a random subset of them (times 1/(1−p)); dropping after A keeps all four or none."""
    layer = impl.LoRALinear(nn.Linear(4, 1, bias=False), 1, 1.0, dropout=0.5).train()
    with torch.no_grad():
        layer.base.weight.zero_()
        layer.lora_A.fill_(1.0)
        layer.lora_B.fill_(1.0)
        path = layer(torch.tensor([1.0, 2.0, 4.0, 8.0]).repeat(64, 1))[:, 0] / 2  # (64,) subset sums of 1, 2, 4, 8
    assert all(v == int(v) and 0 <= v <= 15 for v in path.tolist())
    assert len(set(path.tolist())) > 2, f"the path took only the values {sorted(set(path.tolist()))}"


def test_unfrozen_bias(impl):
    """After apply_lora only the adapters train."""
    model = tiny_gpt()
    impl.apply_lora(model, rank=2, alpha=4, targets=["c_attn"])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable), trainable


def test_tied_head_merge(impl):
    """Merging keeps what the model computes; where it cannot (a weight shared with the embedding), it refuses."""
    model = tiny_gpt()  # lm_head shares its weight with transformer.wte
    lora.apply_lora(model, rank=2, alpha=4, targets=["lm_head"])
    make_B_nonzero(model)
    idx = torch.randint(0, 64, (2, 8))
    before = logits(model, idx)
    try:
        impl.merge_and_unload(model)
    except ValueError:
        return  # refused, the model untouched: right too
    assert torch.allclose(logits(model, idx), before, atol=1e-5)


def test_symmetric_codebook(impl):
    """16 levels, with −1, 0 and +1 exactly: zeros (padding, pruned weights) must come back exactly."""
    levels = impl.nf4_codebook()
    assert levels.numel() == 16 and (levels == 0).sum() == 1 and levels.min() == -1 and levels.max() == 1


def test_nibble_order(impl):
    """bitsandbytes' order: [a, b] -> 16a + b, which the library's unpack_nibbles inverts for every pair."""
    codes = torch.cartesian_prod(torch.arange(16), torch.arange(16)).reshape(-1)  # (512,) all pairs
    assert torch.equal(lora.unpack_nibbles(impl.pack_nibbles(codes)).long(), codes)


def test_merge_into_w16(impl):
    """After QLoRA, the merged model computes what the trained 4-bit model computed."""
    model = tiny_gpt()
    impl.quantize_model(model)
    lora.apply_lora(model, rank=2, alpha=4, targets=["c_attn"])
    make_B_nonzero(model)
    idx = torch.randint(0, 64, (2, 8))
    before = logits(model, idx)
    impl.merge_and_unload(model)
    assert torch.allclose(logits(model, idx), before, atol=1e-4)


def test_norm_not_detached(impl):
    """DoRA's gradients treat the norm as a constant (§4.3): those of m·(W0 + ΔW)/c with c = ‖W0 + ΔW‖ fixed."""
    f64 = dict(dtype=torch.float64)
    W, x, g = torch.randn(6, 8, **f64), torch.randn(5, 8, **f64), torch.randn(5, 6, **f64)
    A, B, m = torch.randn(2, 8, **f64), torch.randn(6, 2, **f64), torch.rand(6, **f64) + 0.5
    grads = []
    for use_impl in (True, False):
        A_, B_, m_ = (t.clone().requires_grad_() for t in (A, B, m))
        if use_impl:
            out = impl.dora_forward(x, W, None, A_, B_, 2.0, m_)
        else:
            adapted = W + 2.0 * B_ @ A_
            out = F.linear(x, m_[:, None] * adapted / lora.weight_norm(adapted).detach()[:, None])
        out.backward(g)
        grads.append([A_.grad, B_.grad, m_.grad])
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(*grads, strict=True))


def test_window_off_by_one(impl):
    """The window [start, length) is kept while it holds at most block_size tokens, and restarts at the
    newest `keep` tokens once it would hold more."""
    for block_size, keep in ((8, 4), (16, 8), (5, 5)):
        for start in (0, 3):
            assert impl.window_start(start + block_size, start, block_size, keep) == start
            assert impl.window_start(start + block_size + 1, start, block_size, keep) == start + block_size + 1 - keep
