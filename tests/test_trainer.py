"""minigpt.trainer and minigpt.optim: the schedule, the optimizer set-up, gradient accumulation, and what train() returns and writes."""

import itertools
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_pre_hook

from helpers import FAST, V, corpus, tiny_gpt
from minigpt.checkpoint import read_checkpoint
from minigpt.optim import configure_optimizer, lr_at
from minigpt.trainer import TrainConfig, estimate_loss, train


class Bigram(nn.Module):
    """A float64 bigram model: logits = W[idx] + b. Small enough for exact comparisons."""

    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(V, V, dtype=torch.float64)
        self.bias = nn.Parameter(torch.zeros(V, dtype=torch.float64))  # a vector: lands in the no-decay group

    def forward(self, idx, targets=None):
        logits = self.wte(idx) + self.bias  # (B, T, V)
        return logits, F.cross_entropy(logits.view(-1, V), targets.view(-1))


def test_lr_schedule_hand_values():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=9, lr_decay_steps=109, steps=200)
    assert lr_at(0, cfg) == pytest.approx(0.1)     # warm-up start: lr * 1 / (W + 1)
    assert lr_at(8, cfg) == pytest.approx(0.9)     # last warm-up step: lr * 9 / 10
    assert lr_at(9, cfg) == pytest.approx(1.0)     # warm-up end: the peak
    assert lr_at(59, cfg) == pytest.approx(0.55)   # halfway through the cosine: (lr + min_lr) / 2
    assert lr_at(109, cfg) == pytest.approx(0.1)   # decay end: min_lr
    assert lr_at(150, cfg) == pytest.approx(0.1)   # and after it
    decay = [lr_at(s, cfg) for s in range(9, 110)]
    assert all(a > b for a, b in itertools.pairwise(decay))


def test_lr_decay_ends_at_the_last_step_by_default():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=0, steps=20)
    assert lr_at(0, cfg) == pytest.approx(1.0)
    assert lr_at(19, cfg) > 0.1
    assert lr_at(20, cfg) == pytest.approx(0.1)


def test_weight_decay_only_on_matrices():
    model = tiny_gpt()
    cfg = TrainConfig(lr=0.5, weight_decay=0.1)
    opt = configure_optimizer(model, cfg)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(p) for p in model.parameters() if p.dim() >= 2}
    # with zero gradients AdamW's step is pure decoupled decay: matrices shrink by (1 - lr * wd), vectors stay
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        if p.dim() >= 2:
            torch.testing.assert_close(p.detach(), before[n] * (1 - 0.5 * 0.1))
        else:
            assert torch.equal(p, before[n]), n


def test_grad_accumulation_equals_one_big_batch():
    data = corpus()
    results = []
    for batch_size, accum in ((8, 1), (2, 4)):
        torch.manual_seed(0)
        model = Bigram()
        start = [p.detach().clone() for p in model.parameters()]
        cfg = TrainConfig(steps=3, batch_size=batch_size, grad_accum_steps=accum, block_size=8, lr=0.1,
                          warmup_steps=0, grad_clip=0.5, eval_interval=0, progress=False)
        res = train(model, data, None, cfg)
        results.append((res.train_losses, [p.detach() for p in model.parameters()]))
        assert not any(torch.equal(a, b) for a, b in zip(start, results[-1][1], strict=True))  # it did train
    (loss_big, params_big), (loss_acc, params_acc) = results
    assert loss_big == pytest.approx(loss_acc, rel=1e-12)
    for a, b in zip(params_big, params_acc, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_short_run_lowers_loss():
    data = corpus()
    res = train(tiny_gpt(), data[:2500], data[2500:], TrainConfig(steps=60, eval_interval=30, **FAST))
    (step0, initial), *_, (last, final) = res.val_losses
    assert step0 == 0 and last == 60
    assert initial == pytest.approx(math.log(V), abs=0.2)  # an untrained model is uniform over the vocabulary
    assert final < 0.5 * initial
    assert res.final_val_loss == final and len(res.train_losses) == 60


def test_runs_are_reproducible_on_cpu():
    data = corpus()
    cfg = TrainConfig(steps=5, eval_interval=0, **FAST)
    a = train(tiny_gpt(dropout=0.1), data, None, cfg)
    b = train(tiny_gpt(dropout=0.1), data, None, cfg)
    assert a.train_losses == b.train_losses


def test_frozen_params_untouched_by_train():
    model = tiny_gpt()
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("transformer.h.1.")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = train(model, corpus(), None, TrainConfig(steps=3, eval_interval=0, weight_decay=0.1, **FAST))
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != p.requires_grad, n  # frozen: identical; trainable: changed
    # AdamW keeps exp_avg and exp_avg_sq (float32) plus a float32 step count per trainable tensor
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert res.optimizer_state_bytes == sum(2 * 4 * p.numel() + 4 for p in trainable)


def test_caller_param_groups_replace_the_default():
    model = tiny_gpt()
    frozen_by_lr = list(model.transformer.h[0].parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("transformer.h.0.")]
    before = [p.detach().clone() for p in frozen_by_lr]
    groups = [{"params": frozen_by_lr, "lr": 0.0}, {"params": rest}]  # lr 0 also cancels decoupled decay
    train(model, corpus(), None, TrainConfig(steps=2, eval_interval=0, **FAST), param_groups=groups)
    assert all(torch.equal(p, b) for p, b in zip(frozen_by_lr, before, strict=True))
    assert not torch.equal(model.transformer.h[1].mlp.c_fc.weight, tiny_gpt().transformer.h[1].mlp.c_fc.weight)


def test_metrics_lines_and_callback_report_every_step(tmp_path):
    seen = []
    path = tmp_path / "logs" / "metrics.jsonl"
    cfg = TrainConfig(steps=5, eval_interval=2, metrics_path=str(path), **FAST)
    res = train(tiny_gpt(), corpus()[:2500], corpus()[2500:], cfg, callback=lambda step, m: seen.append((step, m)))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [m["step"] for m in lines] == [0, 1, 2, 3, 4, 5] == [s for s, _ in seen]
    assert [m["step"] for m in lines if "val_loss" in m] == [0, 2, 4, 5] == [s for s, _ in res.val_losses]
    assert {"step", "loss", "lr", "tokens_per_sec", "elapsed"} <= set(lines[1])
    assert [m["loss"] for m in lines[1:]] == res.train_losses


def test_a_resumed_run_logs_each_step_once(tmp_path):
    # a run to 8 steps checkpointed at 4 and stopped while logging step 6: its lines for 5, 6 and the
    # half-written one are replaced by the resumed run's, not kept beside them
    path = tmp_path / "metrics.jsonl"
    cfg = TrainConfig(steps=4, lr_decay_steps=8, eval_interval=2, out=str(tmp_path), metrics_path=str(path), **FAST)
    train(tiny_gpt(), corpus()[:2500], corpus()[2500:], cfg)
    with path.open("a") as f:
        f.write('{"step": 5, "loss": 9.0}\n{"step": 6, "loss": 9.0}\n{"step": 7, "lo')
    train(tiny_gpt(), corpus()[:2500], corpus()[2500:], TrainConfig(**{**vars(cfg), "steps": 6, "resume": True}))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [m["step"] for m in lines] == [0, 1, 2, 3, 4, 5, 6]
    assert all(m.get("loss") != 9.0 for m in lines)


def test_result_counts_tokens_and_time():
    cfg = TrainConfig(steps=3, grad_accum_steps=2, eval_interval=0, **FAST)
    res = train(tiny_gpt(), corpus(), corpus(), cfg)
    assert res.tokens_seen == 3 * 4 * 2 * 16  # steps * batch * micro-steps * block
    assert res.step_time_ms > 0 and res.tokens_per_sec > 0 and res.wall_time > 0
    assert res.peak_memory_bytes > 0
    assert res.val_losses == [(3, res.final_val_loss)]  # eval_interval 0: only at the end


def test_estimate_loss_repeats_and_restores_mode():
    model = tiny_gpt(dropout=0.5).train()
    cfg = TrainConfig(**FAST)
    a, b = estimate_loss(model, corpus(), cfg), estimate_loss(model, corpus(), cfg)
    assert a == b  # same batches, and eval mode (dropout at 0.5 would make two calls differ)
    assert model.training


def test_gradient_checkpointing_gives_the_same_losses():
    cfg = dict(steps=3, eval_interval=0, **FAST)
    plain = train(tiny_gpt(), corpus(), None, TrainConfig(**cfg))
    model = tiny_gpt()
    ckpt = train(model, corpus(), None, TrainConfig(gradient_checkpointing=True, **cfg))
    assert model.gradient_checkpointing
    assert ckpt.train_losses == pytest.approx(plain.train_losses, rel=1e-6)


@pytest.mark.parametrize("bad, word", [
    (dict(batch_size=0), "batch_size"), (dict(steps=-1), "steps"), (dict(block_size=1.5), "block_size"),
    (dict(lr=0.0), "lr"), (dict(lr=1e-3, min_lr=1e-2), "min_lr"), (dict(grad_clip=-1.0), "grad_clip"),
    (dict(device="tpu"), "device"),
])
def test_bad_config_values_raise(bad, word):
    with pytest.raises(ValueError, match=word):
        TrainConfig(**bad)


def test_bad_training_inputs_raise():
    with pytest.raises(ValueError, match="block_size=32 exceeds"):
        train(tiny_gpt(), corpus(), None, TrainConfig(**{**FAST, "block_size": 32}))
    with pytest.raises(ValueError, match="data has 10 tokens"):
        train(tiny_gpt(), corpus(10), None, TrainConfig(**FAST))
    model = tiny_gpt().requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        train(model, corpus(), None, TrainConfig(**FAST))
    with pytest.raises(ValueError, match="extra"):
        train(tiny_gpt(), corpus(), None, TrainConfig(**FAST), extra={"tokenizer": object()})


@pytest.mark.parametrize("bad, word", [
    (dict(lr=math.inf), "lr"), (dict(lr=math.nan), "lr"), (dict(min_lr=math.nan), "min_lr"),
    (dict(grad_clip=math.inf), "grad_clip"), (dict(grad_clip=math.nan), "grad_clip"), (dict(beta1=1.0), "beta1"),
    (dict(beta2=math.nan), "beta2"), (dict(weight_decay=math.inf), "weight_decay"), (dict(weight_decay=-0.1), "weight_decay"),
    (dict(lr="1e-3"), "lr"), (dict(compile="yes"), "compile"), (dict(resume=1), "resume"), (dict(out=3), "out"),
])
def test_non_finite_or_loosely_typed_settings_are_refused(bad, word):
    with pytest.raises(ValueError, match=f"TrainConfig.{word}="):
        TrainConfig(**bad)


class FailsAt(nn.Module):
    """tiny_gpt() whose loss (mode "loss") or gradient (mode "grad") becomes non-finite at forward call `at`."""

    def __init__(self, at, mode):
        super().__init__()
        self.gpt, self.at, self.mode, self.calls = tiny_gpt(), at, mode, 0
        self.config = self.gpt.config

    def forward(self, idx, targets=None):
        self.calls += 1
        logits, loss = self.gpt(idx, targets)
        if self.calls == self.at and self.mode == "loss":
            loss = loss * math.nan
        elif self.calls == self.at:
            loss = loss + (logits * 0).sum()
            logits.register_hook(lambda g: g + math.inf)
        return logits, loss


@pytest.mark.parametrize("mode, what", [("loss", "loss is nan"), ("grad", "gradient norm is")])
def test_non_finite_step_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, mode, what):
    model = FailsAt(at=4, mode=mode)
    cfg = TrainConfig(steps=6, eval_interval=0, out=str(tmp_path), checkpoint_interval=2,
                      metrics_path=str(tmp_path / "m.jsonl"), **FAST)
    with pytest.raises(ValueError, match=f"optimizer step 4: the {what}") as e:
        train(model, corpus(), None, cfg)
    assert str(tmp_path) in str(e.value)
    ckpt = read_checkpoint(tmp_path)  # the step-2 checkpoint, untouched and finite
    assert ckpt["step"] == 2 and all(torch.isfinite(t).all() for t in ckpt["model"].values())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the failing step updated nothing
    assert [json.loads(line)["step"] for line in open(tmp_path / "m.jsonl")] == [1, 2, 3]


def test_gradient_is_clipped_before_the_optimizer_step():
    """The gradient the optimizer sees has norm <= grad_clip (here the raw norm is far above it)."""
    seen = []

    def before_step(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        seen.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

    handle = register_optimizer_step_pre_hook(before_step)
    try:
        train(tiny_gpt(), corpus(), None, TrainConfig(steps=3, eval_interval=0, grad_clip=1e-3, **FAST))
    finally:
        handle.remove()
    assert len(seen) == 3
    assert all(n == pytest.approx(1e-3, rel=1e-4) for n in seen)  # raw norms are ~1: clipping must have happened
