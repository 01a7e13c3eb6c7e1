"""GPT.generate with and without the KV cache (minigpt.generation, minigpt.kv_cache).

The "test" preset has block_size 16, so a 5-token prompt plus 40 new tokens slides the window twice
with the default window_keep of 8. Nothing here times anything: speeds live in the benchmark.
"""

import pytest
import torch

from helpers import V, tiny_gpt
from lora import LinearNF4, apply_lora, lora_layers, merge_lora, quantize_model, unmerge_lora
from minigpt.generation import MIN_TEMPERATURE, next_token_probs
from minigpt.kv_cache import KVCache, LayerCache, window_start
from minigpt.model import GPT

BLOCK = 16
SETTINGS = [dict(temperature=0), dict(temperature=1.0), dict(temperature=0.7, top_k=5)]


def both_ways(model, idx, n, seed=3, **kw):
    """(cached, uncached) outputs of the same call, each with a generator seeded alike."""
    return tuple(model.generate(idx, n, generator=torch.Generator().manual_seed(seed), use_cache=c, **kw)
                 for c in (True, False))


def prompt(b=2, t=5, seed=1):
    return torch.randint(V, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("window_keep", [None, 1, BLOCK])
def test_cached_equals_uncached_token_for_token_across_window_slides(settings, window_keep):
    cached, uncached = both_ways(tiny_gpt(), prompt(), 40, window_keep=window_keep, **settings)
    assert cached.shape == (2, 45)
    assert torch.equal(cached, uncached)


def _randomize_lora_b(model):
    """LoRA's B starts at zero, which would make the adapters invisible: give it values first."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.5)


@pytest.mark.parametrize("settings", SETTINGS[:2])
def test_cached_equals_uncached_with_lora_unmerged_and_merged(settings):
    base = tiny_gpt()
    model = apply_lora(tiny_gpt(), rank=4, alpha=8, targets=["c_attn", "c_fc"])
    _randomize_lora_b(model)
    idx = prompt()
    plain, _ = both_ways(base, idx, 30, **settings)
    unmerged = both_ways(model, idx, 30, **settings)
    assert torch.equal(*unmerged)
    assert not torch.equal(unmerged[0], plain)  # the adapters change the tokens: they are really there
    merge_lora(model)
    assert torch.equal(*both_ways(model, idx, 30, **settings))
    unmerge_lora(model)
    assert torch.equal(both_ways(model, idx, 30, **settings)[0], unmerged[0])


@pytest.mark.parametrize("settings", SETTINGS[:2])
def test_cached_equals_uncached_with_an_nf4_base(settings):
    model = tiny_gpt()
    quantize_model(model, targets="all-linear")
    assert any(isinstance(m, LinearNF4) for m in model.modules())
    assert torch.equal(*both_ways(model, prompt(), 30, **settings))
    apply_lora(model, rank=4, alpha=8, targets=["c_attn"])
    _randomize_lora_b(model)
    assert torch.equal(*both_ways(model, prompt(), 30, **settings))


def test_cached_logits_equal_the_training_forward():
    model = tiny_gpt().eval()
    idx = prompt(t=12)
    cache = KVCache(model.config.n_layer, BLOCK)
    with torch.no_grad():
        full, _ = model(idx)  # (B, T, V)
        steps = [model.forward_cached(idx[:, :4], cache)] + [model.forward_cached(idx[:, t:t + 1], cache)
                                                              for t in range(4, 12)]
    assert torch.allclose(torch.stack(steps, 1), full[:, 3:], atol=1e-5)
    assert cache.length == 12


def test_cache_never_holds_more_than_block_size(monkeypatch):
    lengths, append = [], LayerCache.append

    def spy(self, k, v):
        out = append(self, k, v)
        lengths.append(self.length)
        assert self.capacity <= BLOCK and out[0].size(2) == self.length
        return out

    monkeypatch.setattr(LayerCache, "append", spy)
    out = tiny_gpt().generate(prompt(), 60, temperature=0)
    assert out.shape == (2, 65)
    assert max(lengths) == BLOCK  # filled up to the window...
    assert any(b < a for a, b in zip(lengths, lengths[1:], strict=False))  # ...and refilled after each slide


def test_generation_longer_than_block_size_follows_the_window_rule():
    model = tiny_gpt().eval()
    idx = prompt(t=3)
    out = model.generate(idx, 30, temperature=0)
    # by hand with window_keep 8: positions 3..16 see out[:, 0:t]; at length 17 the window restarts at 9 ...
    start = 0
    for t in range(3, out.size(1)):
        start = window_start(t, start, BLOCK, 8)
        assert t - start <= BLOCK
        with torch.no_grad():
            logits, _ = model(out[:, start:t])
        assert torch.equal(out[:, t], logits[:, -1].argmax(-1))
    assert start == 18  # the window restarted at 9 (length 17) and at 18 (length 26): two slides


def test_window_rule_keeps_a_full_window_until_it_overflows():
    assert window_start(16, 0, 16, 8) == 0
    assert window_start(17, 0, 16, 8) == 9
    assert window_start(17, 0, 16, 16) == 1  # keep = block_size: nanoGPT's crop to the last block_size tokens
    assert window_start(25, 9, 16, 8) == 9


def test_prompt_longer_than_block_size_starts_from_its_last_window():
    model = tiny_gpt()
    long = prompt(t=BLOCK + 7)
    for use_cache in (True, False):
        a = model.generate(long, 10, temperature=0, use_cache=use_cache)
        b = model.generate(long[:, -BLOCK:], 10, temperature=0, use_cache=use_cache)
        assert torch.equal(a[:, -10:], b[:, -10:])


def test_top_k_1_equals_greedy():
    model = tiny_gpt()
    greedy = model.generate(prompt(), 30, temperature=0)
    sampled = model.generate(prompt(), 30, temperature=1.3, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampled, greedy)


def test_every_sampled_token_is_among_the_k_most_likely():
    model, k = tiny_gpt().eval(), 3
    out = model.generate(prompt(b=4, t=2), BLOCK - 2, temperature=2.0, top_k=k,
                         generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, _ = model(out[:, :-1])  # the whole output fits one window: position t-1 predicts token t
    allowed = logits[:, 1:].topk(k, dim=-1).indices  # (B, T - 2, k)
    assert (out[:, 2:, None] == allowed).any(-1).all()
    greedy = model.generate(prompt(b=4, t=2), BLOCK - 2, temperature=0)
    assert not torch.equal(out, greedy)  # a high temperature really sampled beyond the top token


def test_zero_new_tokens_returns_the_prompt_and_training_mode_is_restored():
    model = tiny_gpt().train()
    idx = prompt()
    assert torch.equal(model.generate(idx, 0), idx)
    model.generate(idx, 3)
    assert model.training


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens=-1"),
    (dict(max_new_tokens=2.0), ValueError, "max_new_tokens=2.0"),
    (dict(max_new_tokens=True), ValueError, "max_new_tokens=True"),
    (dict(temperature=float("nan")), ValueError, "temperature=nan"),
    (dict(temperature=float("inf")), ValueError, "temperature=inf"),
    (dict(temperature=-0.5), ValueError, "temperature=-0.5"),
    (dict(temperature="0.8"), ValueError, "temperature='0.8'"),
    (dict(temperature=1e-40), ValueError, "temperature=1e-40: use 0 for greedy"),  # logits / T would overflow
    (dict(temperature=MIN_TEMPERATURE / 2), ValueError, "or at least 1e-06"),
    (dict(generator=42), ValueError, "generator=42: must be a torch.Generator"),
    (dict(generator="cpu"), ValueError, "generator='cpu'"),
    (dict(generator=torch.Generator(), temperature=0), None, None),
    (dict(top_k=0), ValueError, "top_k=0"),
    (dict(top_k=True), ValueError, "top_k=True"),
    (dict(top_k=2.5), ValueError, "top_k=2.5"),
    (dict(use_cache="yes"), ValueError, "use_cache='yes'"),
    (dict(window_keep=0), ValueError, "window_keep=0"),
    (dict(window_keep=BLOCK + 1), ValueError, "window_keep=17"),
    (dict(idx=torch.zeros((1, 0), dtype=torch.long)), ValueError, "at least one token"),
    (dict(idx=torch.zeros(4, dtype=torch.long)), ValueError, r"shape \(4,\)"),
    (dict(idx=torch.zeros((1, 4))), ValueError, "torch.float32"),
    (dict(idx=[[1, 2]]), ValueError, "list"),
    (dict(idx=torch.tensor([[1, V]])), ValueError, f"token id {V}"),
    (dict(idx=torch.tensor([[-1, 2]])), ValueError, "token id -1"),
])
def test_bad_arguments_raise_naming_the_value(kwargs, error, match):
    args = {**dict(idx=prompt(), max_new_tokens=4), **kwargs}
    if error is None:  # the control: a good generator passes
        assert tiny_gpt().generate(**args).shape == (2, 9)
        return
    with pytest.raises(error, match=match):
        tiny_gpt().generate(**args)


@pytest.mark.parametrize("kwargs", [dict(generator=7, temperature=0), dict(generator=7), dict(temperature=1e-9)])
def test_bad_settings_are_refused_before_the_first_forward_pass(monkeypatch, kwargs):
    # greedy decoding never draws, so a wrong generator would otherwise pass unnoticed there
    def forward_is_not_reached(*args, **kw):
        raise AssertionError("generate ran the model before checking its arguments")

    monkeypatch.setattr(GPT, "forward", forward_is_not_reached)
    monkeypatch.setattr(GPT, "forward_cached", forward_is_not_reached)
    for use_cache in (True, False):
        with pytest.raises(ValueError):
            tiny_gpt().generate(prompt(), 4, use_cache=use_cache, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device type")
def test_a_generator_on_another_device_is_refused():
    with pytest.raises(ValueError, match="generator is on cuda"):
        tiny_gpt().generate(prompt(), 4, generator=torch.Generator(device="cuda"))


def spread_gpt():
    """tiny_gpt with its (tied) embedding scaled up: logits a few units apart, not all near 0, so that
    temperatures change the distribution visibly."""
    model = tiny_gpt().eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(30)
    return model


def test_temperature_divides_the_logits():
    logits = 3 * torch.randn(3, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for T in (0.5, 1.0, 2.0):
        torch.testing.assert_close(next_token_probs(logits, T, None), torch.softmax(logits / T, -1), rtol=0, atol=1e-15)
    top = logits.topk(4).indices  # top-k: softmax(logits / T) over the k largest, 0 elsewhere
    expected = torch.zeros_like(logits).scatter(1, top, torch.softmax(logits.gather(1, top) / 2, -1))
    torch.testing.assert_close(next_token_probs(logits, 2.0, 4), expected, rtol=0, atol=1e-15)


def test_samples_at_temperature_2_follow_softmax_of_half_the_logits():
    # n seeded draws of the first new token from one prompt: each token's count is binomial, so its
    # frequency lies within 5 standard deviations, 5 sqrt(p (1 - p) / n), of p (and one count of rounding)
    model, n = spread_gpt(), 20_000
    idx = prompt(b=1, t=3).expand(n, 3)
    out = model.generate(idx, 1, temperature=2.0, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(out[:, -1], minlength=V).double() / n
    with torch.no_grad():
        logits = model(idx[:1])[0][0, -1].double()  # (V,)
    bound = lambda p: 5 * (p * (1 - p) / n).sqrt() + 1 / n
    p2 = torch.softmax(logits / 2, -1)
    assert ((freq - p2).abs() <= bound(p2)).all()
    p1 = torch.softmax(logits, -1)  # not vacuous: the undivided logits would fail the same bound
    assert ((freq - p1).abs() > bound(p1)).any()


def test_the_smallest_temperature_samples_what_greedy_decoding_picks():
    model = spread_gpt()
    greedy = model.generate(prompt(), 20, temperature=0)
    coldest = model.generate(prompt(), 20, temperature=MIN_TEMPERATURE, generator=torch.Generator().manual_seed(0))
    assert torch.equal(coldest, greedy)


def test_top_k_above_the_vocabulary_keeps_every_token():
    model = tiny_gpt()
    draws = [model.generate(prompt(), 20, top_k=k, generator=torch.Generator().manual_seed(4)) for k in (None, 10**6)]
    assert torch.equal(*draws)


@pytest.mark.parametrize("settings", SETTINGS)
def test_cached_equals_uncached_for_a_prompt_longer_than_block_size(settings):
    cached, uncached = both_ways(tiny_gpt(), prompt(t=BLOCK + 7), 30, **settings)
    assert cached.shape == (2, BLOCK + 37)
    assert torch.equal(cached, uncached)


def test_generated_ids_can_feed_a_training_step_afterwards():
    """generate runs in inference mode; what it returns must still be an ordinary tensor that autograd
    may save (the embedding keeps its ids for backward)."""
    model = tiny_gpt().train()
    out = model.generate(prompt(), 6, temperature=0)
    assert model.training and not out.is_inference()
    _, loss = model(out[:, :-1], out[:, 1:])
    loss.backward()
    assert model.transformer.wte.weight.grad is not None
