"""Double quantisation of the NF4 scales (lora/quant/double_quant.py, QLoRA §3)."""

import pytest
import torch

from lora.quant.double_quant import (
    DQ_SCHEMES,
    double_dequantize,
    double_quant_scheme_errors,
    double_quantize,
    dynamic_map,
    roundtrip_constants,
)
from lora.quant.nf4 import block_absmax


def gaussian_absmax(n_weights=2**18):
    return block_absmax(torch.randn(n_weights), 64)


def test_double_quantize_hand_example():
    # mean 2.5, centred [-1.5, -0.5, 0.5, 1.5], s = 1.5: q = round(127·c/s) = [-127, -42.33.., 42.33.., 127]
    q, scale, mean = double_quantize(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert q.tolist() == [-127, -42, 42, 127] and q.dtype == torch.int8
    assert scale.tolist() == [1.5] and mean.tolist() == [2.5]
    expected = torch.tensor([-127, -42, 42, 127]) * (1.5 / 127) + 2.5
    assert torch.allclose(double_dequantize(q, scale, mean), expected, rtol=0, atol=1e-6)


def test_partial_last_block_and_error_bound():
    absmax = gaussian_absmax(64 * 300)  # 300 constants: one full block of 256 and one of 44
    q, scale, mean = double_quantize(absmax)
    assert q.shape == (300,) and scale.shape == (2,) and mean.shape == (1,)
    err = (double_dequantize(q, scale, mean) - absmax).abs()
    bound = scale.repeat_interleave(256)[:300] / 254  # half of an int8 step s/127
    assert torch.all(err <= bound * (1 + 1e-5) + 1e-7) and err.max() > bound.max() / 10


def test_equal_constants_survive():
    absmax = torch.full((300,), 0.3)
    assert torch.allclose(double_dequantize(*double_quantize(absmax)), absmax, rtol=0, atol=1e-7)


def test_dynamic_map_is_bitsandbytes_signed_layout():
    code = dynamic_map()
    assert code.shape == (256,) and torch.all(code[1:] > code[:-1])
    assert code[127] == 0 and code[255] == 1 and code[0] > -1
    assert torch.equal(code[:127], -code[128:255].flip(0))  # 127 negatives mirror 127 positives; 1 has no mirror


def test_int8_has_the_lowest_error_of_the_three_schemes():
    errors = double_quant_scheme_errors(gaussian_absmax())
    assert set(errors) == set(DQ_SCHEMES)
    assert errors["int8"]["rmse"] < errors["dynamic"]["rmse"] < errors["fp8_e4m3"]["rmse"]
    assert all(e["max_rel"] < 0.05 for e in errors.values())


def test_int8_scheme_is_what_double_quantize_stores():
    absmax = gaussian_absmax(64 * 1000)
    assert torch.equal(roundtrip_constants(absmax, "int8"), double_dequantize(*double_quantize(absmax)))


def test_bad_scheme_raises():
    with pytest.raises(ValueError, match="scheme='fp4'"):
        roundtrip_constants(torch.ones(4), "fp4")
