"""Double quantisation of the NF4 block scales (QLoRA §3, "Double Quantization").

Blockwise NF4 keeps one float32 absmax per 64 weights: 32/64 = 0.5 bits of overhead per weight.
QLoRA quantises those constants a second time: subtract their mean, cut them into blocks of 256,
and store each as 8 bits plus one float32 scale per 256 constants:

    overhead = 8/64 + 32/(64·256) ≈ 0.127 bits per weight   (instead of 0.5)

Three 8-bit formats are in use for the second level, all implemented here so they can be compared:

    int8      round(127·c/s), s = max|c| of the block           torchao; the one we store
    fp8_e4m3  c·448/s cast to float8 e4m3 (3 mantissa bits)      the paper ("8-bit Floats")
    dynamic   nearest entry of bitsandbytes' dynamic 8-bit map   bitsandbytes (compress_statistics)

See Note: Why int8 for the second level, below. `double_quant_scheme_errors` measures all three.

Shape legend:
    nb    number of first-level constants (one per weight block)
    nq    number of second-level blocks = ceil(nb / 256)
"""

import math

import torch
import torch.nn.functional as F

DQ_BLOCKSIZE = 256  # constants per second-level block (QLoRA §3)
DQ_SCHEMES = ("int8", "fp8_e4m3", "dynamic")

# Note: Why int8 for the second level
# The absmax of 64 Gaussian weights has a right-skewed distribution, so in each 256-block the scale
# s = max|a - mean| is set by a few large constants while most centred values are small: for Gaussian
# weights about 3 in 4 lie within 0.3·s (median 0.18·s). In that range int8's step is s/127 for every
# value; the dynamic map's is 0.9·s/64 above 0.1·s (finer only below 0.1·s), and FP8 e4m3 scaled so
# that s maps to 448 steps by s/112 from 0.07·s, s/56 from 0.14·s, s/28 from 0.29·s. Measured on Gaussian weights
# (`double_quant_scheme_errors`, figures in docs/nf4.md) int8 has the lowest error of the three, and it
# is a single rounding a student can check by hand. Deviation: the paper uses FP8, and bitsandbytes the
# dynamic map, so our stored scales are not bit-compatible with its compress_statistics=True. The 4-bit
# codes are, because codes are always computed from the float32 absmax (as bitsandbytes does too).


def _blocks_of(c, blocksize):
    """(nb,) -> (nq, blocksize), zero-padded; zero is the centre, so padding never raises a block's max."""
    pad = (-c.numel()) % blocksize
    return F.pad(c, (0, pad)).view(-1, blocksize)


def double_quantize(absmax, blocksize=DQ_BLOCKSIZE):
    """Quantise the float32 block constants to int8 after centring: q = round(127·(a − ā)/s) (QLoRA §3).

    Args:
        absmax: (nb,) float32 first-level constants.
        blocksize: constants per second-level block (256 in QLoRA).
    Returns:
        (q, scale, mean): q (nb,) int8; scale (nq,) float32, the max |a − ā| of each block;
        mean (1,) float32, ā. Rounding is torch.round (half to even).
    """
    mean = absmax.float().mean().reshape(1)                    # (1,)
    blocks = _blocks_of(absmax.float() - mean, blocksize)      # (nq, 256)
    scale = blocks.abs().amax(dim=1)                           # (nq,)
    inv = 127.0 / scale.clamp(min=torch.finfo(torch.float32).tiny)  # an all-equal block has s = 0: q = 0
    q = torch.round(blocks * inv[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(-1)[: absmax.numel()], scale, mean


def double_dequantize(q, scale, mean, blocksize=DQ_BLOCKSIZE):
    """â = q·s/127 + ā, the inverse of `double_quantize`; (nb,) int8 -> (nb,) float32."""
    blocks = _blocks_of(q.float(), blocksize)                  # (nq, 256)
    out = blocks * (scale.float() / 127.0)[:, None] + mean.float()
    return out.reshape(-1)[: q.numel()]


def dynamic_map():
    """bitsandbytes' signed dynamic 8-bit map (Dettmers, 2016), 256 sorted float32 values in [-1, 1].

    For i = 0..6 the decade [10^(i-6)·0.1, 10^(i-6)] holds 2^i linearly spaced values (bin centres of
    linspace(0.1, 1, 2^i + 1)), mirrored for the negatives; 0 and 1 complete the 256 entries. The
    number of fraction values doubles with each decade, so precision is relative, like a float.
    """
    values = [0.0, 1.0]
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        centres = (edges[:-1] + edges[1:]) / 2
        values += (10.0 ** (i - 6) * centres).tolist() + (-(10.0 ** (i - 6)) * centres).tolist()  # float32 products
    return torch.tensor(sorted(values), dtype=torch.float32)


def _roundtrip_fp8(blocks, scale):
    """(nq, 256) -> (nq, 256): scale each block to e4m3's largest normal (448), cast, cast back."""
    if not hasattr(torch, "float8_e4m3fn"):
        raise ValueError("scheme 'fp8_e4m3' needs torch.float8_e4m3fn (PyTorch >= 2.1)")
    s = scale.clamp(min=torch.finfo(torch.float32).tiny)[:, None]
    return (blocks * (448.0 / s)).to(torch.float8_e4m3fn).float() * (s / 448.0)


def _roundtrip_dynamic(blocks, scale):
    """(nq, 256) -> (nq, 256): nearest entry of the dynamic map of c/s, times s.

    bitsandbytes' CPU kernel searches the map approximately and, for a few small values (4 of 4096 in
    one test), picks the neighbour of the nearest entry; this is the exact nearest-entry rounding.
    """
    code = dynamic_map().to(blocks.device)
    s = scale.clamp(min=torch.finfo(torch.float32).tiny)[:, None]
    idx = torch.bucketize(blocks * (1.0 / s), (code[:-1] + code[1:]) / 2)
    return code[idx] * s


def roundtrip_constants(absmax, scheme, blocksize=DQ_BLOCKSIZE):
    """Centre, quantise with `scheme` and reconstruct the constants: (nb,) float32 -> (nb,) float32."""
    if scheme == "int8":
        return double_dequantize(*double_quantize(absmax, blocksize), blocksize=blocksize)
    if scheme not in DQ_SCHEMES:
        raise ValueError(f"scheme={scheme!r}: must be one of {DQ_SCHEMES}")
    mean = absmax.float().mean()
    blocks = _blocks_of(absmax.float() - mean, blocksize)      # (nq, 256)
    scale = blocks.abs().amax(dim=1)
    rt = _roundtrip_fp8 if scheme == "fp8_e4m3" else _roundtrip_dynamic
    return (rt(blocks, scale) + mean).reshape(-1)[: absmax.numel()]


def double_quant_scheme_errors(absmax, blocksize=DQ_BLOCKSIZE):
    """Reconstruction error of the constants under each 8-bit scheme.

    Args:
        absmax: (nb,) float32 first-level constants, e.g. `block_absmax(weight, 64)`.
    Returns:
        {scheme: {"rmse": ..., "rel_rmse": rmse / rms(absmax), "max_rel": max |â − a| / a}} as floats.
    """
    a = absmax.float()
    rms = a.pow(2).mean().sqrt()
    out = {}
    for scheme in DQ_SCHEMES:
        err = roundtrip_constants(a, scheme, blocksize) - a
        rmse = err.pow(2).mean().sqrt()
        max_rel = (err.abs() / a.clamp(min=torch.finfo(torch.float32).tiny)).max()
        out[scheme] = {"rmse": rmse.item(), "rel_rmse": (rmse / rms).item(), "max_rel": max_rel.item()}
    return out


def num_dq_blocks(num_constants, blocksize=DQ_BLOCKSIZE):
    """Second-level blocks for `num_constants` first-level constants: ceil(nb / 256)."""
    return math.ceil(num_constants / blocksize)
