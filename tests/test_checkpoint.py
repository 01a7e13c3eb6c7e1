"""minigpt.checkpoint: exact resumption, weights_only loading, and bad files rejected before anything changes."""

import os

import pytest
import torch

from helpers import FAST, assert_unchanged, corpus, snapshot, tiny_gpt
from minigpt.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from minigpt.optim import configure_optimizer
from minigpt.trainer import TrainConfig, train


@pytest.fixture
def saved(tmp_path):
    """A checkpoint of a tiny run (2 steps, so the optimizer has state) and the config that wrote it."""
    cfg = TrainConfig(steps=2, eval_interval=0, out=str(tmp_path / "run"), **FAST)
    train(tiny_gpt(), corpus(), None, cfg, extra={"note": "hello"})
    return tmp_path / "run" / "ckpt.pt", cfg


def test_resume_continues_exactly_as_the_uninterrupted_run(tmp_path):
    # dropout on, so the restored RNG state matters too; lr_decay_steps fixed, so both halves share one schedule
    common = dict(lr_decay_steps=8, eval_interval=0, grad_accum_steps=2, **FAST)
    straight_model = tiny_gpt(dropout=0.1)
    straight = train(straight_model, corpus(), None, TrainConfig(steps=8, out=str(tmp_path / "a"), **common))
    first = train(tiny_gpt(dropout=0.1), corpus(), None, TrainConfig(steps=4, out=str(tmp_path / "b"), **common))
    torch.manual_seed(12345)  # scramble the global RNG: the checkpoint must bring its own state back
    resumed_model = tiny_gpt(seed=99, dropout=0.1)  # other initial weights: they must come from the checkpoint
    resumed = train(resumed_model, corpus(), None,
                    TrainConfig(steps=8, out=str(tmp_path / "b"), resume=True, **common))
    assert len(first.train_losses) == 4
    assert resumed.train_losses == straight.train_losses  # exact float equality, all 8 steps
    assert resumed.tokens_seen == straight.tokens_seen
    for (name, a), b in zip(straight_model.state_dict().items(), resumed_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_resume_without_a_checkpoint_starts_fresh(tmp_path):
    cfg = TrainConfig(steps=2, eval_interval=0, out=str(tmp_path / "new"), resume=True, **FAST)
    res = train(tiny_gpt(), corpus(), None, cfg)
    assert len(res.train_losses) == 2 and os.path.isfile(res.checkpoint_path)


def test_checkpoint_is_plain_data_loadable_with_weights_only(saved):
    path, cfg = saved
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["step"] == 2 and ckpt["extra"] == {"note": "hello"}
    assert ckpt["train_config"]["lr"] == cfg.lr and ckpt["model_config"]["n_embd"] == 16
    assert set(ckpt["rng"]) == {"torch", "cuda", "batch"} and len(ckpt["history"]["train_losses"]) == 2
    assert os.listdir(path.parent) == ["ckpt.pt"]  # no temporary file left behind


def test_truncated_checkpoint_raises_and_leaves_model_untouched(saved):
    path, _ = saved
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    model = tiny_gpt(seed=1)
    opt = configure_optimizer(model, TrainConfig())
    before = snapshot(model)
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_checkpoint(path, model, opt)
    assert_unchanged(model, before)
    assert not opt.state


def test_corrupted_weight_bytes_are_detected(saved):
    path, _ = saved
    raw = bytearray(path.read_bytes())
    weight = read_checkpoint(path)["model"]["transformer.h.0.mlp.c_fc.weight"]
    # torch stores a tensor's storage raw, in its memory order (here GPT-2's (d_in, d_out)), so it is findable
    at = raw.find(bytes(weight.untyped_storage()))
    assert at > 0
    raw[at + 100] ^= 0x01  # one bit of one float: torch.load alone would not notice
    path.write_bytes(raw)
    model = tiny_gpt(seed=1)
    before = snapshot(model)
    with pytest.raises(ValueError, match="checksum"):
        load_checkpoint(path, model)
    assert_unchanged(model, before)


def test_checkpoint_from_another_model_config_raises(saved):
    path, _ = saved
    model = tiny_gpt(n_embd=32)
    before = snapshot(model)
    with pytest.raises(ValueError, match="n_embd: checkpoint 16, here 32"):
        load_checkpoint(path, model)
    assert_unchanged(model, before)


def test_resume_with_another_train_config_raises_and_changes_nothing(saved):
    path, cfg = saved
    model = tiny_gpt(seed=1)
    before = snapshot(model)
    other = TrainConfig(**{**FAST, "lr": 2e-2}, steps=4, eval_interval=0, out=cfg.out, resume=True)
    with pytest.raises(ValueError, match="lr: checkpoint 0.01, here 0.02"):
        train(model, corpus(), None, other)
    assert_unchanged(model, before)


def test_optimizer_of_another_layout_raises(saved):
    path, _ = saved
    model = tiny_gpt(seed=1)
    one_group = torch.optim.AdamW(model.parameters())  # the checkpoint's optimizer had two groups
    before = snapshot(model)
    with pytest.raises(ValueError, match="param groups"):
        load_checkpoint(path, model, one_group)
    assert_unchanged(model, before)


def test_other_file_kinds_raise(tmp_path):
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a minigpt-checkpoint"):
        read_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="truncated or corrupted"):
        read_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "missing")


def test_trainable_only_stores_and_restores_just_those_params(tmp_path):
    model = tiny_gpt()
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("transformer.h.1.attn.")
    with torch.no_grad():
        model.transformer.h[1].attn.c_attn.weight.add_(1.0)  # make the trainable part differ from a fresh model
    path = save_checkpoint(tmp_path, model, trainable_only=True)
    ckpt = read_checkpoint(path)
    assert set(ckpt["model"]) == {n for n, p in model.named_parameters() if p.requires_grad}
    fresh = tiny_gpt()
    for name, p in fresh.named_parameters():
        p.requires_grad = name.startswith("transformer.h.1.attn.")
    load_checkpoint(path, fresh)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True))


def test_unloadable_extra_is_rejected_before_writing(saved):
    path, _ = saved
    good = path.read_bytes()
    with pytest.raises(ValueError, match="extra/tokenizer"):
        save_checkpoint(path, tiny_gpt(), extra={"tokenizer": object()})
    assert path.read_bytes() == good


def rewrite(path, **changes):
    """Replace parts of a saved checkpoint and re-sign it, as a hand-made hostile file would."""
    from minigpt.checkpoint import _digest
    ckpt = torch.load(path, weights_only=True)
    ckpt.update(changes)
    ckpt["checksum"] = _digest(ckpt)
    torch.save(ckpt, path)


@pytest.mark.parametrize("part, value", [
    ("step", "2"), ("step", 2.0), ("step", True), ("step", -1), ("model", [1, 2]), ("model", {"w": 1.0}),
    ("trainable_only", 0), ("optimizer", "adam"), ("optimizer", {"state": [], "param_groups": []}),
    ("rng", [1]), ("rng", {"torch": "x", "cuda": [], "batch": None}), ("train_config", None),
    ("history", {"train_losses": 1.0}), ("extra", "note"),
])
def test_checkpoint_part_of_the_wrong_type_is_refused_naming_it(saved, part, value):
    path, _ = saved
    rewrite(path, **{part: value})
    model = tiny_gpt(seed=1)
    before = snapshot(model)
    with pytest.raises(ValueError, match=f"checkpoint part '{part}' is"):
        load_checkpoint(path, model)
    assert_unchanged(model, before)


@pytest.mark.parametrize("where", ["model", "optimizer"])
def test_non_finite_tensor_in_checkpoint_is_refused_on_load(saved, where):
    path, _ = saved
    ckpt = torch.load(path, weights_only=True)
    if where == "model":
        ckpt["model"]["transformer.wpe.weight"][0, 0] = float("nan")
        name = "model/transformer.wpe.weight"
    else:
        ckpt["optimizer"]["state"][0]["exp_avg"][0, 0] = float("inf")
        name = "optimizer/state/0/exp_avg"
    rewrite(path, **{where: ckpt[where]})
    model = tiny_gpt(seed=1)
    opt = configure_optimizer(model, TrainConfig())
    before = snapshot(model)
    with pytest.raises(ValueError, match=f"tensor {name} holds NaN or inf"):
        load_checkpoint(path, model, opt)
    assert_unchanged(model, before)
    assert not opt.state


def test_non_finite_model_is_never_written(tmp_path):
    model = tiny_gpt()
    with torch.no_grad():
        model.transformer.ln_f.weight[3] = float("inf")
    with pytest.raises(ValueError, match="ln_f.weight holds NaN or inf"):
        save_checkpoint(tmp_path / "ckpt.pt", model)
    assert not os.listdir(tmp_path)
