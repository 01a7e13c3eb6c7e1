"""The fine-tune's header: what runs, where, on how many threads, and a calibrated time estimate."""

import pytest
import torch

from minigpt.finetune import FinetuneConfig
from minigpt.finetune.compare import compare_configs
from minigpt.finetune.estimate import calibrate, describe_compare, describe_run, estimate, estimate_compare
from minigpt.model import GPTConfig
from minigpt.threads import threads_header


def _cfg(tmp_path, **kw):
    (tmp_path / "corpus.txt").write_text("the king and queen of rome\n" * 50, encoding="utf-8")
    fields = dict(base_corpus=str(tmp_path / "corpus.txt"), base_preset="test", base_steps=40, cache_dir=str(tmp_path),
                  out=str(tmp_path / "run"), steps=20, batch_size=4, block_size=16, eval_interval=10, eval_batches=2,
                  device="cpu", progress=False)
    return FinetuneConfig(**{**fields, **kw})


def test_estimate_counts_pretraining_only_for_an_uncached_tiny_base(tmp_path):
    times = estimate(_cfg(tmp_path))
    assert times["cached"] is False and times["pretrain"] > 0 and times["finetune"] > 0
    assert times["total"] == times["pretrain"] + times["finetune"]
    scratch = estimate(_cfg(tmp_path, base="scratch", method="full", base_corpus=None))
    assert scratch["cached"] is None and scratch["pretrain"] == 0


def test_header_names_method_device_threads_and_estimate(tmp_path):
    cfg = _cfg(tmp_path, method="qlora", rank=2)
    line = describe_run(cfg, {"pretrain": 30.0, "finetune": 150.0, "total": 180.0, "cached": False})
    assert "\n" not in line and "qlora r=2" in line and "pretrained first, 40 steps: about 30 s" in line
    assert "on tiny Shakespeare" in line and f"on cpu, threads: {threads_header(cfg.threads)};" in line
    (tmp_path / "play.txt").write_text("ROMEO: good night\n" * 50, encoding="utf-8")  # validate checks it exists
    assert "on play.txt:" in describe_run(_cfg(tmp_path, data=str(tmp_path / "play.txt")), {**dict.fromkeys(
        ("pretrain", "finetune", "total"), 1.0), "cached": True}) and "about 3.0 min" in line and "estimate" in line


def test_calibration_of_a_deep_model_extrapolates_from_two_blocks():
    wide = GPTConfig(vocab_size=50257, block_size=64, n_layer=24, n_head=2, n_embd=64)  # over the work budget
    seconds = calibrate(wide, batch_size=2, block_size=64, device=torch.device("cpu"))
    assert seconds > 0


def test_compare_header_pretrains_once_and_names_every_run(tmp_path):
    cfg = _cfg(tmp_path)
    times = estimate_compare(compare_configs(cfg, ranks=(1, 2)))
    assert len(times["runs"]) == 7 and times["total"] == times["pretrain"] + times["finetune"] > 0
    line = describe_compare(cfg, times)
    assert "\n" not in line and "7 fine-tuning runs" in line and "lora-r2" in line and "dora-r8" in line and "pissa-r8" in line and "lora-r64" not in line
    assert "scratch" in line and "threads" in line


def test_evaluation_count_matches_the_trainers_schedule():
    from minigpt.finetune.estimate import evaluations
    from minigpt.model import GPT
    from minigpt.trainer import TrainConfig, train

    data = torch.randint(64, (400,))
    for steps, interval in ((5, 2), (4, 2), (3, 0)):
        torch.manual_seed(0)
        cfg = TrainConfig(steps=steps, batch_size=2, block_size=8, eval_interval=interval, eval_batches=1,
                          device="cpu", progress=False)
        result = train(GPT(GPTConfig.from_preset("test")), data, data, cfg)
        assert len(result.val_losses) == evaluations(steps, interval)


def test_estimate_is_the_runs_flops_over_the_calibrated_rate(tmp_path):
    from minigpt.finetune.base_model import base_config
    from minigpt.finetune.config import recipe_of, validate
    from minigpt.finetune.estimate import evaluations, run_flops, run_plan

    cfg = validate(_cfg(tmp_path, base="scratch", method="full", base_corpus=None))
    times = estimate(cfg)
    _, flops = run_flops(base_config(cfg.base, recipe_of(cfg)), run_plan(cfg), cfg.steps,
                         cfg.batch_size, cfg.block_size, evaluations(cfg.steps, cfg.eval_interval), cfg.eval_batches)
    assert times["finetune"] * times["rate"] == pytest.approx(flops)
