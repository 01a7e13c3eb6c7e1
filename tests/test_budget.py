"""minigpt.budget: its counts, bytes and FLOPs equal what real models and a real AdamW step hold and do."""

import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lora import apply_lora, count_parameters, nbytes, quantize_model
from lora.quant.report import llama2_7b_spec, memory_row
from lora.targets import resolve_targets
from minigpt.budget import (
    BudgetConfig,
    TrainPlan,
    activation_bytes,
    budget_rows,
    flops_per_token,
    gradient_bytes,
    named_shape,
    optimizer_bytes,
    parameter_counts,
    saved_tensor_bytes,
    weight_bytes,
)
from minigpt.budget.__main__ import main
from minigpt.budget.costs import linear_flops, lora_side_flops
from minigpt.budget.memory import nf4_bits_per_weight
from minigpt.budget.shapes import adapted_layers
from minigpt.model import GPT, GPTConfig

PLANS = [TrainPlan("full"), TrainPlan("lora", 4, "c_attn"), TrainPlan("lora", 4, "all-linear"),
         TrainPlan("lora", 2, "c_attn, c_fc"), TrainPlan("qlora", 4, "all-linear"), TrainPlan("qlora", 2, "c_attn")]


def build(preset, plan):
    """The real model `plan` trains: GPT(preset), NF4 linears for QLoRA, LoRA adapters, in training mode."""
    model = GPT(GPTConfig.from_preset(preset))
    if plan.method == "qlora":
        quantize_model(model, targets="all-linear")
    if plan.method != "full":
        apply_lora(model, rank=plan.rank, alpha=2 * plan.rank, targets=plan.targets)
    return model.train()


@pytest.mark.parametrize("preset", ["test", "tiny"])
@pytest.mark.parametrize("plan", PLANS, ids=lambda p: f"{p.method}-{p.targets}")
def test_counts_equal_lora_count_parameters_on_real_models(preset, plan):
    model = build(preset, plan)
    counts = parameter_counts(named_shape(preset), plan)
    assert (counts["trainable"], counts["total"]) == count_parameters(model)
    assert counts["trainable_tensors"] == sum(1 for p in model.parameters() if p.requires_grad)


def test_gpt2_c_attn_rank_8_trains_pefts_294912():
    assert parameter_counts(named_shape("gpt2"), TrainPlan("lora", 8, "c_attn"))["trainable"] == 294_912
    assert parameter_counts(named_shape("gpt2"), TrainPlan("full"))["total"] == 124_439_808


@pytest.mark.parametrize("targets", ["c_attn", "c_proj", "all-linear", "attn.c_proj, c_fc"])
def test_adapted_layers_are_the_ones_lora_targets_resolve(targets):
    with torch.device("meta"):
        model = GPT(GPTConfig.from_preset("tiny"))
    real = {name.split(".", 3)[-1] for name, _ in resolve_targets(model, targets)}  # "transformer.h.0.attn.c_attn"
    assert {name for name, _, _ in adapted_layers(named_shape("tiny"), targets)} == real


def test_llama_7b_shape_matches_the_nf4_reports_spec():
    row, counts = memory_row(llama2_7b_spec()), parameter_counts(named_shape("llama-7b"), TrainPlan("qlora", 8))
    assert counts["total"] - counts["adapter"] == row["params"] == 6_738_415_616
    assert counts["quantized"] == row["quantized_params"]


def test_gpt3_wq_wv_ranks_give_the_lora_papers_budgets():
    shape = named_shape("gpt3-175b")
    r1, r4 = (parameter_counts(shape, TrainPlan("lora", r, "q,v"))["trainable"] for r in (1, 4))
    assert r1 == 96 * 2 * 1 * (12288 + 12288) == 4_718_592  # the 4.7M row
    assert r4 == 4 * r1 == 18_874_368                       # the 18M budget of §7.1
    assert parameter_counts(shape, TrainPlan("lora", 1, "c_attn"))["trainable"] == 96 * (12288 + 3 * 12288)


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: f"{p.method}-{p.targets}")
def test_gradient_and_optimizer_bytes_equal_a_real_adamw_step(plan):
    model = build("test", plan)
    x = torch.randint(64, (2, 16))
    model(x, x)[1].backward()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    optimizer.step()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values())
    shape = named_shape("test")
    assert gradient_bytes(shape, plan) == grads > 0
    assert optimizer_bytes(shape, plan) == state > 2 * grads


def test_qlora_nf4_bytes_equal_the_stored_tensors():
    plan, model = TrainPlan("qlora", 4, "c_attn"), build("tiny", TrainPlan("qlora", 4, "c_attn"))
    stored = sum(nbytes(m.weight_q) for m in model.modules() if hasattr(m, "weight_q"))
    counts = parameter_counts(named_shape("tiny"), plan)
    assert weight_bytes(named_shape("tiny"), plan) - 4 * (counts["total"] - counts["quantized"]) == stored
    assert weight_bytes(named_shape("tiny"), plan, double_quant=False) > weight_bytes(named_shape("tiny"), plan)


def test_nf4_bits_per_weight_with_and_without_double_quantisation():
    assert nf4_bits_per_weight(double_quant=False) == 4.5
    assert nf4_bits_per_weight() == pytest.approx(4 + 8 / 64 + 32 / (64 * 256)) == pytest.approx(4.127, abs=1e-3)


def test_linear_flops_by_hand():
    # y = x W^T for x (1, 3), W (5, 3): 15 multiply-adds forward; dx = dy W and dW = dy^T x, 15 each
    assert linear_flops(3, 5, trained=True) == (30, 60)
    assert linear_flops(3, 5, trained=False) == (30, 30)  # frozen: only dx
    assert lora_side_flops(2, 3, 5) == (2 * 2 * (3 + 5), 4 * 2 * (3 + 5))
    layer = torch.nn.Linear(3, 5, bias=False)
    x = torch.randn(7, 3, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        layer(x).sum().backward()
    assert counter.get_total_flops() == 7 * sum(linear_flops(3, 5, trained=True))


@pytest.mark.parametrize("plan", PLANS[:4], ids=lambda p: f"{p.method}-{p.targets}")
def test_flops_equal_torchs_count_of_a_real_step(plan):
    # N = B·T = 128 positions, more than any layer is wide: every LoRA layer folds B A into W0 both ways
    # (the unfolded path's in-place addmm_ is not in torch's FLOP table)
    model, B, T = build("test", plan), 8, 16
    x = torch.randint(64, (B, T))
    with FlopCounterMode(display=False) as counter:
        model(x, x)[1].backward()
    counted = {str(op) for op in counter.get_flop_counts()["Global"]}
    flops = flops_per_token(named_shape("test"), plan, T, tokens=B * T)
    # the CPU's fused attention kernel is not in torch's FLOP table: compare the products with weights
    expected = flops["train"] - (0 if any("attention" in op for op in counted) else flops["attention"])
    assert counter.get_total_flops() == pytest.approx(B * T * expected, rel=1e-12)


def test_folding_b_a_into_w0_pays_only_beyond_the_layer_width():
    shape, plan = named_shape("gpt2"), TrainPlan("lora", 8, "c_attn")
    plain = flops_per_token(shape, plan, 64)
    assert flops_per_token(shape, plan, 64, tokens=64) == plain  # N = 64 <= 768: the side path runs as written
    forward_only = flops_per_token(shape, plan, 64, tokens=2048)  # 768 < N = 2048 <= 2304: folds the forward only
    both = flops_per_token(shape, plan, 64, tokens=4096)
    assert both["lora"] < forward_only["lora"] < plain["lora"]
    assert both["matmul_weights"] == forward_only["matmul_weights"] == plain["matmul_weights"]


def test_lora_backward_skips_the_frozen_weights_gradients():
    shape, T = named_shape("gpt2"), 512
    full, lora = flops_per_token(shape, TrainPlan("full"), T), flops_per_token(shape, TrainPlan("lora", 8), T)
    assert full["backward"] == 2 * full["forward"]
    assert lora["forward"] > full["forward"] and lora["backward"] < 0.6 * full["backward"]


@pytest.mark.parametrize("plan", PLANS[:4], ids=lambda p: f"{p.method}-{p.targets}")
def test_activation_bytes_match_the_tensors_autograd_saves(plan):
    model, B, T = build("tiny", plan), 2, 64
    x = torch.randint(256, (B, T))
    measured, _ = saved_tensor_bytes(model, x, x)
    predicted = activation_bytes(named_shape("tiny"), plan, B, T)
    assert predicted == pytest.approx(measured, rel=0.01)


def test_with_checkpointing_each_more_block_keeps_only_its_input():
    plan, B, T = TrainPlan("full"), 4, 512
    shallow, deep = named_shape("gpt2", n_layer=4), named_shape("gpt2", n_layer=8)
    kept = activation_bytes(deep, plan, B, T, checkpointing=True) - activation_bytes(shallow, plan, B, T,
                                                                                      checkpointing=True)
    assert kept == 4 * B * T * 768 * 4  # four more inputs of C float32 numbers per token
    assert activation_bytes(deep, plan, B, T) - activation_bytes(shallow, plan, B, T) > 10 * kept


def test_rows_put_lora_below_full_and_qlora_below_lora():
    full, lora, qlora = budget_rows(BudgetConfig(base="gpt2", dtype="bfloat16"), rate=1e12)
    assert full["flop_ratio"] == 1 and lora["flop_ratio"] < 0.75
    assert qlora["weights_bytes"] < 0.5 * lora["weights_bytes"] and lora["total_bytes"] < full["total_bytes"]
    assert lora["step_seconds"] == pytest.approx(lora["step_flops"] / 1e12)


def test_command_prints_the_trainable_count(capsys):
    assert main(["--base", "gpt2", "--method", "lora", "--rank", "8", "--targets", "c_attn", "--batch", "4",
                 "--block-size", "512", "--no-measure"]) == 0
    assert "| trainable parameters | 294,912 |" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--rank", "0"], ["--method", "dora"], ["--targets", "c_nope"], ["--base", "nope"],
                                  ["--dtype", "int8"], ["--batch", "-2"], ["--layers", "2", "--width", "30", "--heads", "4"],
                                  ["--targets", "q,c_attn"], ["--base", "test", "--rank", "17"],
                                  ["--targets", "re:.*"], ["--mlp-ratio", "0"]])
def test_bad_arguments_exit_2_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--no-measure"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1


def test_command_runs_as_printed():
    done = subprocess.run([sys.executable, "-m", "minigpt.budget", "--base", "test", "--batch", "1",
                           "--block-size", "16"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "seconds / step" in done.stdout and "GFLOP/s" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "minigpt.budget", "--batch", "x"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("python -m minigpt.budget: error:")
