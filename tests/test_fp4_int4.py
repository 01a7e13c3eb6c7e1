"""QLoRA's 4-bit baselines (lora/quant/fp4_int4.py): FP4 E2M1's 16 values, Int4's symmetric absmax
levels, and round trips whose error stays within half a step of each block's grid."""

import pytest
import torch

from lora.quant.fp4_int4 import fp4_e2m1_values, fp4_levels, fp4_roundtrip, int4_levels, int4_roundtrip, nearest_levels
from lora.quant.nf4 import block_absmax
from lora.quant.report import int4_absmax_roundtrip


def test_fp4_e2m1_has_the_16_values_of_the_spec():
    positive = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]  # OCP MX v1.0, table of E2M1 values
    assert fp4_e2m1_values().tolist() == positive + [-v for v in positive]
    assert torch.signbit(fp4_e2m1_values()[8])  # code 8 is -0


def test_fp4_levels_are_15_distinct_values_from_minus_1_to_1():
    levels = fp4_levels()
    assert levels.numel() == 15 and torch.all(levels[1:] > levels[:-1])
    assert levels[0] == -1 and levels[-1] == 1 and 0.0 in levels.tolist()
    assert torch.equal(levels, -levels.flip(0))


def test_int4_levels_are_k_over_7():
    levels = int4_levels()
    assert levels.numel() == 15
    assert torch.allclose(levels * 7, torch.arange(-7, 8, dtype=torch.float32))
    assert torch.allclose(levels[1:] - levels[:-1], torch.full((14,), 1 / 7))


def test_a_value_on_a_level_comes_back_exactly():
    for levels in (fp4_levels(), int4_levels()):
        assert torch.equal(nearest_levels(levels, levels), levels)


def _block_bound(w, levels, blocksize):
    """Half of the widest gap of `levels`, times each value's block absmax."""
    absmax = block_absmax(w, blocksize).repeat_interleave(blocksize)[: w.numel()]
    return absmax * (levels[1:] - levels[:-1]).max() / 2


@pytest.mark.parametrize("blocksize", [64, 16])
def test_int4_error_is_at_most_half_a_step(blocksize):
    w = torch.randn(1000)
    err = (int4_roundtrip(w, blocksize) - w).abs()
    assert torch.all(err <= _block_bound(w, int4_levels(), blocksize) * (1 + 1e-6))
    assert err.max() > 0.5 * _block_bound(w, int4_levels(), blocksize).max()  # the bound is not vacuous


@pytest.mark.parametrize("blocksize", [64, 16])
def test_fp4_error_is_at_most_half_the_gap_around_each_value(blocksize):
    w = torch.randn(1000)
    levels = fp4_levels()
    absmax = block_absmax(w, blocksize).repeat_interleave(blocksize)[: w.numel()]
    scaled = w / absmax
    upper = torch.bucketize(scaled, levels).clamp(1, 14)  # the level at or above each value
    half_gap = (levels[upper] - levels[upper - 1]) / 2
    err = (fp4_roundtrip(w, blocksize) - w).abs()
    assert torch.all(err <= half_gap * absmax * (1 + 1e-5) + 1e-7)


def test_each_block_max_is_kept_exactly():
    w = torch.randn(4, 64)
    for roundtrip in (fp4_roundtrip, int4_roundtrip):
        out = roundtrip(w, 64)
        i = w.abs().argmax(dim=1)
        assert torch.allclose(out[torch.arange(4), i], w[torch.arange(4), i])


def test_roundtrips_keep_shape_and_zero_blocks():
    w = torch.zeros(3, 40)
    w[0, :5] = torch.tensor([0.1, -0.2, 0.3, 0.0, 0.05])
    for roundtrip in (fp4_roundtrip, int4_roundtrip):
        out = roundtrip(w, 64)
        assert out.shape == w.shape and torch.all(out[1:] == 0)


def test_report_int4_is_the_same_roundtrip():
    w = torch.randn(500)
    assert torch.equal(int4_absmax_roundtrip(w, 64), int4_roundtrip(w, 64))


@pytest.mark.parametrize("weight, blocksize, match", [
    (torch.tensor([1.0, float("inf")]), 64, "non-finite"),
    (torch.ones(4, dtype=torch.long), 64, "floating point"),
    (torch.ones(4), 3, "blocksize"),
])
def test_bad_input_raises_naming_it(weight, blocksize, match):
    for roundtrip in (fp4_roundtrip, int4_roundtrip):
        with pytest.raises(ValueError, match=match):
            roundtrip(weight, blocksize)
