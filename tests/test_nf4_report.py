"""The memory and error figures of docs/nf4.md (lora/quant/report.py)."""

import pytest
import torch

from lora.quant.nf4 import nbytes, quantize_nf4
from lora.quant.report import (
    error_figures,
    format_memory_table,
    gpt2_small_spec,
    llama2_7b_spec,
    memory_row,
    nf4_storage_bytes,
)
from lora.targets import resolve_targets
from minigpt.model import GPT, GPTConfig


@pytest.mark.parametrize("numel", [1, 63, 64, 129, 64 * 256 * 2 + 7, 768 * 2304])
@pytest.mark.parametrize("double_quant", [False, True])
def test_storage_formula_matches_stored_tensors(numel, double_quant):
    q = quantize_nf4(torch.randn(numel), double_quant=double_quant)
    assert nf4_storage_bytes(numel, 64, double_quant) == nbytes(q)


def test_gpt2_small_spec_matches_the_model():
    with torch.device("meta"):
        model = GPT(GPTConfig.from_preset("gpt2"))
    spec = gpt2_small_spec()
    shapes = sorted(tuple(m.weight.shape) for _, m in resolve_targets(model, "all-linear"))
    assert shapes == sorted((o, i) for o, i, n in spec.linear for _ in range(n))
    quantized = sum(o * i * n for o, i, n in spec.linear)
    assert quantized + spec.other == model.num_parameters() == 124_439_808


def test_llama2_7b_parameter_count():
    spec = llama2_7b_spec()
    assert sum(o * i * n for o, i, n in spec.linear) + spec.other == 6_738_415_616  # Llama 2's published 7B size


def test_memory_row_orders_the_formats():
    row = memory_row(llama2_7b_spec())
    assert row["fp32"] == 2 * row["bf16"] == 4 * row["params"]
    assert row["bf16"] > row["nf4"] > row["nf4_dq"]
    # the quantised weights cost 4.5 and ≈4.127 bits; the rest stays in bf16
    other_bytes = 2 * (row["params"] - row["quantized_params"])
    assert abs(8 * (row["nf4"] - other_bytes) / row["quantized_params"] - 4.5) < 1e-6
    assert abs(8 * (row["nf4_dq"] - other_bytes) / row["quantized_params"] - 4.127) < 1e-3
    table = format_memory_table([row])
    assert "Llama-2-7B" in table and "6,738,415,616" in table


def test_error_figures_rank_nf4_above_int4():
    f = error_figures(numel=2**14)
    assert f["nf4_rmse"] < f["int4_rmse"] and abs(f["dq_rmse_change"]) < 0.01
    assert f["schemes"]["int8"]["weight_rmse"] == pytest.approx(f["nf4_dq_rmse"], rel=1e-12)


def test_the_command_answers_help_and_refuses_unknown_flags(capsys):
    from lora.quant.report import main

    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("usage: python -m lora.quant.report")
    with pytest.raises(SystemExit) as stop:
        main(["--blocksize", "32"])  # it has no options: an argument is refused, not silently ignored
    assert stop.value.code == 2 and "unrecognized arguments: --blocksize 32" in capsys.readouterr().err
