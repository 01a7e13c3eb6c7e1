"""NF4 quantisation (lora/quant/nf4.py): the codebook, packing, round trips, storage, and bitsandbytes parity."""

import dataclasses
import os

import pytest
import torch

from lora.io.safetensors_io import load_file
from lora.quant.nf4 import (
    DEFAULT_CHUNK,
    bits_per_parameter,
    block_absmax,
    dequantize_nf4,
    dequantized_absmax,
    nbytes,
    nearest_level,
    nf4_codebook,
    nf4_offset,
    pack_nibbles,
    quantize_nf4,
    unpack_nibbles,
)
from lora.quant.nf4_checks import check_nf4_weight
from lora.quant.report import int4_absmax_roundtrip

# QLoRA's published NF4 table (Dettmers et al., 2023, Appendix E), to 7 decimals
PUBLISHED_NF4 = [-1.0, -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1847734, -0.0910500, 0.0,
                 0.0795803, 0.1609302, 0.2461123, 0.3379152, 0.4407098, 0.5626170, 0.7229568, 1.0]
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "bnb_nf4.safetensors")
LEVELS = nf4_codebook()
HALF_MAX_GAP = ((LEVELS[1:] - LEVELS[:-1]).max() / 2).item()


def roundtrip(w, **kw):
    return dequantize_nf4(quantize_nf4(w, **kw))


def absmax_per_element(w, blocksize=64):
    return block_absmax(w, blocksize).repeat_interleave(blocksize)[: w.numel()].reshape(w.shape)


# --- the codebook -------------------------------------------------------------------------------

def test_levels_sorted_16_with_minus1_0_plus1():
    assert LEVELS.dtype == torch.float32 and LEVELS.shape == (16,)
    assert torch.all(LEVELS[1:] > LEVELS[:-1])  # sorted and distinct
    assert LEVELS[0].item() == -1.0 and LEVELS[7].item() == 0.0 and LEVELS[15].item() == 1.0
    assert (LEVELS < 0).sum() == 7 and (LEVELS > 0).sum() == 8  # the asymmetric split


def test_levels_match_qlora_table():
    assert torch.allclose(LEVELS.double(), torch.tensor(PUBLISHED_NF4, dtype=torch.float64), rtol=0, atol=1e-6)


def test_levels_bit_identical_to_bitsandbytes_table():
    tensors, _ = load_file(FIXTURE)
    assert torch.equal(LEVELS, tensors["nf4_code"])


def test_offset_is_mean_of_outermost_quantile_positions_for_15_and_16_levels():
    p15, p16 = 1 - 1 / (2 * 15), 1 - 1 / (2 * 16)  # centre of the last of n equal-probability bins
    assert abs(nf4_offset() - (p15 + p16) / 2) < 5e-8
    assert nf4_offset() == 0.9677083  # bitsandbytes' constant, the same value to 7 decimals


def test_ties_go_to_the_lower_level():
    mids = (LEVELS[:-1] + LEVELS[1:]) / 2
    assert torch.equal(nearest_level(mids), torch.arange(15, dtype=torch.int32))
    assert torch.equal(nearest_level(torch.nextafter(mids, torch.tensor(2.0))), torch.arange(1, 16, dtype=torch.int32))
    assert torch.equal(nearest_level(LEVELS), torch.arange(16, dtype=torch.int32))


# --- packing ------------------------------------------------------------------------------------

def test_pack_unpack_identity_all_bytes():
    every_byte = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    codes = unpack_nibbles(every_byte)
    assert torch.equal(pack_nibbles(codes), every_byte)
    assert torch.equal(unpack_nibbles(pack_nibbles(codes)), codes)


def test_first_code_goes_in_the_high_nibble():
    assert pack_nibbles(torch.tensor([1, 2, 15, 0])).tolist() == [0x12, 0xF0]
    assert unpack_nibbles(torch.tensor([0xAB], dtype=torch.uint8)).tolist() == [0xA, 0xB]


# --- round trips --------------------------------------------------------------------------------

def test_requantize_is_lossless():
    nb = 40
    codes = torch.randint(0, 16, (nb, 64))
    codes[:, 0] = 15  # level 1.0 in every block, so the block's absmax is its scale
    scale = torch.rand(nb, 1) * 3 + 0.01
    w = LEVELS[codes] * scale  # (nb, 64), every value on the grid level × absmax
    q = quantize_nf4(w)
    assert torch.equal(unpack_nibbles(q.packed), codes.reshape(-1).to(torch.uint8))
    assert torch.equal(dequantize_nf4(q), w)


@pytest.mark.parametrize("shape", [(64, 64), (3, 49), (1001,)])
def test_error_bounded_by_half_level_gap_times_absmax(shape):
    w = torch.randn(shape) * torch.logspace(-3, 1, shape[-1])  # blocks of very different scales
    err = (roundtrip(w).double() - w.double()).abs()
    bound = HALF_MAX_GAP * absmax_per_element(w).double()
    assert torch.all(err <= bound * (1 + 1e-6))
    assert err.max() > 0.1 * bound.max()  # not vacuous: the errors are of the order of the bound


def test_zero_block_stays_zero():
    w = torch.randn(4, 64)
    w[2] = 0.0
    q = quantize_nf4(w)
    out = dequantize_nf4(q)
    assert torch.equal(out[2], torch.zeros(64)) and q.absmax[2] == 0
    assert torch.all(unpack_nibbles(q.packed).view(4, 64)[2] == 7)  # code 7 is the level 0.0
    assert torch.equal(out[[0, 1, 3]], roundtrip(w[[0, 1, 3]]))  # the other blocks do not notice it


@pytest.mark.parametrize("shape", [(1,), (3,), (63,), (65,), (7, 9), (2, 3, 5), (129,), (2, 64, 3)])
def test_odd_sizes_roundtrip_with_their_shape(shape):
    w = torch.randn(shape)
    q = quantize_nf4(w)
    out = dequantize_nf4(q)
    assert out.shape == w.shape and out.dtype == w.dtype
    assert q.packed.numel() == (w.numel() + 1) // 2 and q.absmax.numel() == -(-w.numel() // 64)
    assert torch.all((out - w).abs() <= HALF_MAX_GAP * absmax_per_element(w) * (1 + 1e-6))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_dtype_is_restored(dtype):
    w = torch.randn(5, 64).to(dtype)
    out = roundtrip(w)
    assert out.dtype == dtype and out.shape == w.shape
    assert roundtrip(w.float()).to(dtype).equal(out)  # computed through float32, as bitsandbytes does


@pytest.mark.parametrize("double_quant", [False, True])
def test_result_independent_of_chunk_size(double_quant):
    w = torch.randn(64 * 37 + 5)
    ref = quantize_nf4(w, double_quant=double_quant, chunk_size=DEFAULT_CHUNK)
    for chunk_size in (64, 128, 64 * 5, 64 * 36, 64 * 38):
        q = quantize_nf4(w, double_quant=double_quant, chunk_size=chunk_size)
        for name, t in ref.tensors().items():
            assert torch.equal(q.tensors()[name], t), (chunk_size, name)


# --- storage ------------------------------------------------------------------------------------

def test_bits_per_param_without_double_quant_is_4_5():
    q = quantize_nf4(torch.randn(128, 512))
    assert nbytes(q) == q.packed.numel() + 4 * q.absmax.numel()  # read from the stored tensors
    assert bits_per_parameter(q) == 4 + 32 / 64


def test_bits_per_param_with_double_quant():
    n = 64 * 256 * 4
    q = quantize_nf4(torch.randn(n), double_quant=True)
    assert set(q.tensors()) == {"packed", "absmax_q", "absmax_scale", "absmax_mean"}
    assert q.absmax_q.dtype == torch.int8 and q.absmax_scale.numel() == 4 and q.absmax_mean.numel() == 1
    assert bits_per_parameter(q) == 4 + 8 / 64 + 32 / (64 * 256) + 32 / n  # the mean adds 32/n bits
    assert abs(bits_per_parameter(q) - 4.127) < 1e-3


def test_double_quant_changes_gaussian_rmse_by_less_than_1_percent():
    w = torch.randn(256, 1024) * 0.02
    rmse = (roundtrip(w) - w).pow(2).mean().sqrt()
    rmse_dq = (roundtrip(w, double_quant=True) - w).pow(2).mean().sqrt()
    assert rmse_dq != rmse and abs(rmse_dq / rmse - 1) < 0.01


def test_double_quant_keeps_codes_and_bounds_scale_error():
    w = torch.randn(256, 1024)
    q, qd = quantize_nf4(w), quantize_nf4(w, double_quant=True)
    assert torch.equal(q.packed, qd.packed)  # codes come from the float32 absmax either way
    err = (dequantized_absmax(qd) - q.absmax).abs()
    bound = qd.absmax_scale.repeat_interleave(256)[: err.numel()] / 254  # half an int8 step of s/127
    assert torch.all(err <= bound * (1 + 1e-5) + 1e-7)


def test_nf4_rmse_lower_than_int4_absmax():
    w = torch.randn(2**16)
    rmse_nf4 = (roundtrip(w) - w).pow(2).mean().sqrt()
    rmse_int4 = (int4_absmax_roundtrip(w) - w).pow(2).mean().sqrt()
    assert rmse_nf4 < 0.9 * rmse_int4


# --- bitsandbytes parity ------------------------------------------------------------------------

def fixture_cases():
    tensors, _ = load_file(FIXTURE)
    names = sorted({k.rsplit(".", 1)[0] for k in tensors if "." in k})
    return tensors, names


@pytest.mark.parametrize("name", fixture_cases()[1])
def test_bytes_and_absmax_identical_to_bitsandbytes(name):
    tensors, _ = fixture_cases()
    x, blocksize = tensors[f"{name}.input"], int(tensors[f"{name}.blocksize"])
    q = quantize_nf4(x, blocksize=blocksize)
    assert torch.equal(q.packed, tensors[f"{name}.packed"])
    assert torch.equal(q.absmax, tensors[f"{name}.absmax"])
    assert torch.equal(dequantize_nf4(q), tensors[f"{name}.dequant"])


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("weight, match", [
    (torch.arange(64), "not floating point"),
    (torch.ones(64, dtype=torch.bool), "not floating point"),
    (torch.empty(0, 64), "empty"),
    (torch.tensor([1.0, float("nan")] * 32), "non-finite"),
    (torch.tensor([1.0, float("inf")] * 32), "non-finite"),
    ([1.0, 2.0], "torch.Tensor"),
])
def test_bad_weight_raises(weight, match):
    with pytest.raises(ValueError, match=match):
        quantize_nf4(weight)


@pytest.mark.parametrize("blocksize", [0, -64, 63, 64.0, True, "64", None])
def test_bad_blocksize_raises(blocksize):
    with pytest.raises(ValueError, match="blocksize"):
        quantize_nf4(torch.randn(128), blocksize=blocksize)


@pytest.mark.parametrize("chunk_size", [0, 96, -64])
def test_bad_chunk_size_raises(chunk_size):
    with pytest.raises(ValueError, match="chunk_size"):
        quantize_nf4(torch.randn(128), chunk_size=chunk_size)


@pytest.mark.parametrize("double_quant, change, match", [
    (False, dict(packed=lambda q: q.packed[:-1]), "packed"),
    (False, dict(absmax=lambda q: q.absmax[:-1]), "absmax"),
    (False, dict(absmax=lambda q: q.absmax.double()), "absmax"),
    (False, dict(shape=lambda q: (q.shape[0] + 1, q.shape[1])), "packed"),
    (False, dict(dtype=lambda q: torch.int32), "dtype"),
    (False, dict(blocksize=lambda q: 32), "absmax"),
    (True, dict(absmax_q=lambda q: q.absmax_q[:-1]), "absmax_q"),
    (True, dict(absmax_scale=lambda q: q.absmax_scale[:-1]), "absmax_scale"),
    (True, dict(absmax_mean=lambda q: None), "absmax_mean"),
    (True, dict(absmax=lambda q: torch.ones(q.absmax_q.numel())), "both set"),
])
def test_tampered_object_raises(double_quant, change, match):
    q = quantize_nf4(torch.randn(96, 640), double_quant=double_quant)
    bad = dataclasses.replace(q, **{k: f(q) for k, f in change.items()})
    with pytest.raises(ValueError, match=match):
        dequantize_nf4(bad)
    check_nf4_weight(q)  # the untouched object passes


# --- hostile values -------------------------------------------------------------------------------

def test_weight_beyond_float32_range_is_refused():
    with pytest.raises(ValueError, match="beyond float32"):
        quantize_nf4(torch.tensor([1e300, 1.0] * 32, dtype=torch.float64))


def test_scales_that_overflow_in_double_quant_are_refused():
    with pytest.raises(ValueError, match="non-finite"):
        quantize_nf4(torch.full((256,), 3e38), double_quant=True)


@pytest.mark.parametrize("double_quant, field, value", [
    (False, "absmax", float("nan")), (False, "absmax", float("inf")), (False, "absmax", -0.5),
    (True, "absmax_scale", float("nan")), (True, "absmax_scale", -1.0), (True, "absmax_mean", float("inf")),
])
def test_non_finite_scale_is_refused_before_dequantising(double_quant, field, value):
    q = quantize_nf4(torch.randn(96, 640), double_quant=double_quant)
    bad = getattr(q, field).clone()
    bad[0] = value
    tampered = dataclasses.replace(q, **{field: bad})
    with pytest.raises(ValueError, match=f"{field} holds"):
        dequantize_nf4(tampered)
    with pytest.raises(ValueError, match=f"{field} holds"):
        check_nf4_weight(tampered)


# --- properties -----------------------------------------------------------------------------------

@pytest.mark.parametrize("absmax", [1.0, 0.5, 0.37, 2.75e-3])
def test_midpoint_rounding_follows_the_bitsandbytes_tie_rule(absmax):
    """Values on, and one float32 ulp either side of, every midpoint times the block's absmax.

    bitsandbytes' rule (its kernels compare `x > midpoint`): the code is the number of midpoints the
    scaled value x·(1/absmax) lies strictly above, so a value exactly on a midpoint takes the lower
    level. For a power-of-two absmax every scaled value is exact, so exact ties are certain.
    """
    a = torch.tensor(absmax, dtype=torch.float32)
    mids = (LEVELS[:-1] + LEVELS[1:]) / 2
    around = torch.cat([mids, torch.nextafter(mids, torch.tensor(2.0)), torch.nextafter(mids, torch.tensor(-2.0))])
    block = torch.cat([a.reshape(1), around * a, torch.zeros(64 - 1 - 45)])  # one full block, its absmax is a
    codes = unpack_nibbles(quantize_nf4(block).packed)[:64].long()
    scaled = block * (1.0 / a)  # the rule's scaling (float32 reciprocal, full block)
    expected = (scaled[:, None] > mids[None, :]).sum(dim=1)
    assert torch.equal(codes, expected)
    if absmax in (1.0, 0.5):  # exact ties exist, and went down
        assert torch.equal(codes[1:16], torch.arange(15)) and torch.equal(codes[16:31], torch.arange(1, 16))


def test_double_quant_keeps_one_scale_per_block_of_256_constants():
    """Each second-level block's error is bounded by its own range, not the whole tensor's.

    Block 0 (constants 0..255) lies within 1e-3 of the mean, block 1 spreads +-5 around it; with one
    scale for the tensor, block 0's error would be up to 5/254, thousands of times its bound.
    """
    g = torch.Generator().manual_seed(0)
    narrow = 6.0 + 1e-3 * (2 * torch.rand(256, generator=g) - 1)
    wide = 6.0 + 5.0 * (2 * torch.rand(256, generator=g) - 1)
    wide = torch.cat([wide[:128], 12.0 - wide[:128]])  # symmetric: the mean stays near 6
    constants = torch.cat([narrow, wide])
    weight = torch.zeros(512, 64)
    weight[:, 0] = constants  # one value per 64-block: that block's absmax
    q = quantize_nf4(weight, double_quant=True)
    assert q.absmax_scale.numel() == 2
    err = (dequantized_absmax(q) - constants).abs()
    centred = constants - q.absmax_mean
    for b in range(2):
        own = centred[256 * b:256 * (b + 1)].abs().max()
        assert err[256 * b:256 * (b + 1)].max() <= own / 254 * (1 + 1e-5) + 1e-6
    assert err[:256].max() < 1e-5  # not the tensor's 5/254
