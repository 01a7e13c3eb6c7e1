"""minigpt.model: causality, initial loss, parameter counts, tying, sampling, bad input, checkpointing."""

import math

import pytest
import torch

import minigpt.model
from minigpt.model import GPT, PRESETS, GPTConfig, parameter_count
from minigpt.pretrained import load_pretrained, save_pretrained

TINY = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16)


def tiny_model(**overrides):
    return GPT(GPTConfig(**{**TINY, **overrides})).eval()


def analytic_num_parameters(c):
    """Parameters of GPT-2's architecture with a tied head (nanoGPT's transformer_sizing notebook, by part)."""
    b = 1 if c.bias else 0
    C = c.n_embd
    embeddings = c.vocab_size * C + c.block_size * C  # wte (shared with lm_head) + wpe
    layer_norm = C + b * C
    attention = (C * 3 * C + b * 3 * C) + (C * C + b * C)  # c_attn (q, k, v) + c_proj
    mlp = (C * 4 * C + b * 4 * C) + (4 * C * C + b * C)  # c_fc + c_proj
    block = 2 * layer_norm + attention + mlp  # = 12 C^2 + 2C + 11bC
    return embeddings + c.n_layer * block + layer_norm  # + ln_f


def test_changing_a_future_token_never_changes_earlier_logits():
    model = tiny_model()
    idx = torch.randint(64, (2, 16))
    for t in (0, 7, 15):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 64
        before, _ = model(idx)
        after, _ = model(changed)
        assert torch.equal(before[:, :t], after[:, :t])
        assert not torch.allclose(before[:, t:], after[:, t:])  # the change is visible from position t on


def test_loss_at_init_is_close_to_log_vocab_size():
    # init std 0.02 makes the logits nearly zero, so the predicted distribution is nearly uniform
    model = tiny_model(vocab_size=256)
    idx = torch.randint(256, (8, 16))
    _, loss = model(idx, targets=torch.randint(256, (8, 16)))
    assert abs(loss.item() - math.log(256)) < 0.05


def test_loss_ignores_targets_equal_to_minus_one():
    model = tiny_model()
    idx, targets = torch.randint(64, (2, 16)), torch.randint(64, (2, 16))
    logits, _ = model(idx)
    masked = targets.clone()
    masked[:, 8:] = -1
    _, loss = model(idx, targets=masked)
    expected = torch.nn.functional.cross_entropy(logits[:, :8].reshape(-1, 64), targets[:, :8].reshape(-1))
    assert torch.allclose(loss, expected)


@pytest.mark.parametrize("overrides", [{}, dict(bias=False), dict(n_layer=3, n_head=4, n_embd=32, vocab_size=100)])
def test_num_parameters_equals_analytic_formula(overrides):
    config = GPTConfig(**{**TINY, **overrides})
    model = GPT(config)
    distinct = {p.data_ptr(): p.numel() for p in model.parameters()}
    assert model.num_parameters() == sum(distinct.values()) == analytic_num_parameters(config)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("bias", [True, False])
def test_the_count_from_the_config_alone_matches_the_built_model(preset, bias):
    config = GPTConfig.from_preset(preset, bias=bias)
    with torch.device("meta"):
        model = GPT(config)
    assert parameter_count(config) == model.num_parameters() == analytic_num_parameters(config)


def test_a_model_larger_than_the_memory_is_refused_before_allocating(monkeypatch):
    config = GPTConfig(vocab_size=2**40)  # 844 trillion parameters, 3.4 PB in float32
    need = 4 * parameter_count(config)
    with pytest.raises(ValueError, match=f"parameters need {need:,} bytes in torch.float32, more than the"):
        GPT(config)
    with torch.device("meta"):  # sizes only, no data: still allowed
        assert GPT(config).num_parameters() == need // 4
    monkeypatch.setattr(minigpt.model, "memory_bytes", lambda device: 1000)  # a machine with 1000 bytes
    with pytest.raises(ValueError, match="more than the 1,000 bytes of memory on cpu"):
        GPT(GPTConfig(**TINY))
    monkeypatch.setattr(minigpt.model, "memory_bytes", lambda device: None)  # unknown: nothing is refused
    assert GPT(GPTConfig(**TINY)).num_parameters() == parameter_count(GPTConfig(**TINY))


def test_gpt2_small_has_124_439_808_parameters():
    config = GPTConfig.from_preset("gpt2")
    assert analytic_num_parameters(config) == 124_439_808
    with torch.device("meta"):  # shapes only, no memory or init time
        model = GPT(config)
    assert model.num_parameters() == 124_439_808


def test_lm_head_is_tied_to_token_embedding():
    model = tiny_model()
    assert model.lm_head.weight is model.transformer.wte.weight
    logits, _ = model(torch.randint(64, (1, 4)))
    logits.sum().backward()
    # one tensor, one gradient: the head's and the embedding's contributions are summed into it
    assert model.transformer.wte.weight.grad is model.lm_head.weight.grad


def test_sampling_is_deterministic_under_a_seeded_generator():
    model = tiny_model()
    idx = torch.zeros((2, 1), dtype=torch.long)
    a = model.generate(idx, 20, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(7))
    b = model.generate(idx, 20, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(7))
    c = model.generate(idx, 20, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(8))
    assert a.shape == (2, 21)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_greedy_decoding_takes_the_argmax_each_step():
    model = tiny_model()
    prompt = torch.randint(64, (2, 3))
    # 23 > block_size 16; window_keep=16 crops the context to the last 16 tokens on every step (nanoGPT's rule)
    out = model.generate(prompt, 20, temperature=0, window_keep=16)
    for t in range(3, out.size(1)):
        context = out[:, max(0, t - 16):t]
        logits, _ = model(context)
        assert torch.equal(out[:, t], logits[:, -1].argmax(-1))


@pytest.mark.parametrize("bad", [dict(n_embd=30, n_head=4), dict(n_layer=0), dict(vocab_size=-1),
                                 dict(block_size=2.5), dict(dropout=1.0), dict(dropout=-0.1)])
def test_impossible_config_raises_value_error(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        GPTConfig(**{**TINY, **bad})


@pytest.mark.parametrize("bad_id", [64, -1])
def test_token_id_outside_vocabulary_is_refused_where_ids_enter(bad_id):
    # forward reads no id back (tests/test_token_ids.py); generate, get_batch and the evaluator do
    idx = torch.zeros((1, 4), dtype=torch.long)
    idx[0, 2] = bad_id
    with pytest.raises(ValueError, match=f"token id {bad_id}"):
        tiny_model().generate(idx, 1)


def test_sequence_longer_than_block_size_raises_value_error():
    with pytest.raises(ValueError, match="exceeds block_size 16"):
        tiny_model()(torch.zeros((1, 17), dtype=torch.long))


def test_gradient_checkpointing_gives_identical_gradients():
    model = tiny_model().train()  # checkpointing applies in training mode; dropout is 0
    idx, targets = torch.randint(64, (2, 16)), torch.randint(64, (2, 16))

    def grads(enabled):
        model.zero_grad()
        model.set_gradient_checkpointing(enabled)
        _, loss = model(idx, targets=targets)
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys()
    assert all(torch.equal(plain[n], checkpointed[n]) for n in plain)


@pytest.mark.parametrize("bad", [dict(bias="false"), dict(bias=1), dict(bias=None), dict(n_layer=2.0),
                                 dict(n_head=True), dict(vocab_size="64"), dict(dropout="0.1"),
                                 dict(dropout=float("nan")), dict(dropout=True)])
def test_config_types_are_strict_not_coerced(bad):
    with pytest.raises(ValueError, match=rf"GPTConfig.{next(iter(bad))}="):
        GPTConfig(**{**TINY, **bad})


@pytest.mark.parametrize("targets, words", [
    (torch.randint(64, (2, 16)).float(), "targets must be a .* int64"),
    ([[1, 2]], "targets must be a .*got list"),
    (torch.randint(64, (2, 15)), r"targets shape \(2, 15\) must equal idx shape \(2, 16\)"),
    (torch.randint(64, (32,)), "targets must be a"),
])
def test_bad_targets_raise_value_error_naming_them(targets, words):
    with pytest.raises(ValueError, match=words):
        tiny_model()(torch.randint(64, (2, 16)), targets)


def test_int32_ids_and_targets_give_the_int64_loss():
    model = tiny_model()
    idx, targets = torch.randint(64, (2, 16)), torch.randint(64, (2, 16))
    targets[0, :3] = -1
    assert torch.equal(model(idx, targets)[1], model(idx.int(), targets.int())[1])


def test_empty_sequence_is_refused():
    with pytest.raises(ValueError, match="holds no tokens"):
        tiny_model()(torch.zeros((1, 0), dtype=torch.long))


def test_gpt2_initialisation_statistics():
    """std 0.02 on every weight matrix and embedding, 0.02/√(2·n_layer) on the residual projections c_proj,
    zero biases, LayerNorm at (1, 0) (GPT-2 paper §2.3; nanoGPT). Large enough that a 2% band is tight:
    the smallest matrix has 65,536 entries, so the sample std's error is about 0.3%."""
    torch.manual_seed(0)
    n_layer = 4
    model = GPT(GPTConfig(vocab_size=2048, block_size=256, n_layer=n_layer, n_head=4, n_embd=256))
    checked = 0
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        elif ".ln_" in name or name.startswith("transformer.ln_f"):
            assert torch.equal(p, torch.ones_like(p)), name
        else:
            want = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
            assert p.std().item() == pytest.approx(want, rel=0.02), name
            assert abs(p.mean().item()) < 5 * want / math.sqrt(p.numel()), name
            checked += 1
    assert checked == 2 + 4 * n_layer  # wte (= lm_head), wpe, and c_attn, attn.c_proj, c_fc, mlp.c_proj per block


def block_linears(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".h." in f".{n}"}


def stored_transposed(w):
    """(n, m) values stored as the (m, n) matrix, row by row: for the blocks, GPT-2's Conv1D layout."""
    return w.stride() == (1, w.size(0))


def test_block_and_embedding_weights_are_stored_transposed_with_torch_shapes_and_values():
    model = tiny_model()
    layers = block_linears(model)
    assert len(layers) == 4 * model.config.n_layer
    for name, m in layers.items():
        assert m.weight.shape == (m.out_features, m.in_features), name
        assert stored_transposed(m.weight) and not m.weight.is_contiguous(), name
    wte = model.transformer.wte.weight
    assert wte.shape == (64, 16) and stored_transposed(wte) and model.lm_head.weight is wte
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    fc = block_linears(model.double())["transformer.h.0.mlp.c_fc"]
    assert torch.allclose(fc(x), x @ fc.weight.detach().contiguous().T + fc.bias, atol=1e-12, rtol=0)


def test_transposed_storage_survives_training_steps_dtype_moves_and_loading_weights(tmp_path):
    model = tiny_model().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(64, (2, 8))
    before = block_linears(model)["transformer.h.1.attn.c_attn"].weight.detach().clone()
    for _ in range(2):
        opt.zero_grad()
        model(idx, idx)[1].backward()
        opt.step()
    grads = [m.weight.grad for m in block_linears(model).values()]
    assert all(g is not None and stored_transposed(g) for g in grads)  # no relayout copy in backward
    after = block_linears(model)["transformer.h.1.attn.c_attn"].weight
    assert not torch.equal(after, before)  # the steps did update the weights...
    assert all(stored_transposed(m.weight) for m in block_linears(model).values())  # ...in place
    assert stored_transposed(model.transformer.wte.weight)  # the embedding's and the head's gradients, summed
    fresh = tiny_model()
    fresh.load_state_dict(model.state_dict())
    save_pretrained(model, tmp_path)  # a GPT-2 folder: load_pretrained builds on the meta device, then fills it
    for m in (fresh, fresh.to(torch.float64), load_pretrained(tmp_path)):
        assert all(stored_transposed(layer.weight) for layer in block_linears(m).values())
        assert stored_transposed(m.transformer.wte.weight) and m.lm_head.weight is m.transformer.wte.weight


def test_sliced_ids_and_targets_give_the_loss_of_their_contiguous_copies():
    model = tiny_model()
    seq = torch.randint(64, (3, 9))
    idx, targets = seq[:, :-1], seq[:, 1:]  # views into one tensor, not contiguous
    assert not targets.is_contiguous()
    assert torch.equal(model(idx, targets)[1], model(idx.contiguous(), targets.contiguous())[1])
