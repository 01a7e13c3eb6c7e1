"""The two 4-bit data types QLoRA compares NF4 with (Dettmers et al., 2023, §3 and Table 2): FP4 and Int4.

All three share the blockwise absmax scheme of lora.quant.nf4: a block of `blocksize` values is
divided by its absmax, so it lies in [-1, 1], each value is rounded to the nearest of 16 codes'
levels, and the level times the absmax comes back. Only the levels differ:

    Int4 (symmetric absmax)  k/7 for k = -7..7: 15 evenly spaced levels (code -8 unused), exact zero
    FP4 E2M1                 1 sign, 2 exponent, 1 mantissa bit: ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}, divided by 6
    NF4                      quantiles of N(0, 1) (lora.quant.nf4.nf4_codebook)

Evenly spaced levels waste resolution where normally distributed weights are rare (near ±1) and FP4
packs its levels near zero; NF4 puts them where the weights are, which is QLoRA's argument for it.

FP4 here is the E2M1 of the OCP Microscaling spec (v1.0, §5.3.3) and of NVIDIA's FP4, exponent bias 1.
bitsandbytes' "fp4" is E2M1 with another bias and its own subnormal ({0, 0.0625, 2, 3, 4, 6, 8, 12}/12
in magnitude); QLoRA's Table 2 does not say which levels it used, so we take the standard ones.

Shape legend:
    n   numel of the weight      bs  blocksize (64)      nb  blocks = ceil(n / bs)
"""

import torch
import torch.nn.functional as F

from lora.quant.nf4 import block_absmax
from lora.quant.nf4_checks import check_blocksize, check_weight

INT4_MAX = 7  # symmetric: levels -7..7, so the grid is its own mirror and holds an exact zero


def fp4_e2m1_values():
    """The values of the 16 FP4 E2M1 codes, float32, in code order (OCP MX spec v1.0, §5.3.3).

    Code c = 8·s + 2·e + m (sign s, exponent e in 0..3, mantissa m in 0..1) has the value
    (−1)^s · 2^(e−1) · (1 + m/2) for e > 0 and (−1)^s · m/2 for e = 0 (subnormal): codes 0..7 are
    0, 0.5, 1, 1.5, 2, 3, 4, 6 and codes 8..15 their negatives, code 8 being −0.
    """
    codes = torch.arange(16)
    s, e, m = codes >> 3, (codes >> 1) & 3, (codes & 1).float()
    magnitude = torch.where(e > 0, torch.exp2(e.float() - 1) * (1 + m / 2), m / 2)
    return torch.where(s == 1, -magnitude, magnitude)


def fp4_levels():
    """FP4 E2M1's 15 distinct values (±0 are one) divided by the largest, 6: ascending, in [-1, 1]."""
    values = torch.unique(fp4_e2m1_values())  # sorted; -0.0 == 0.0 merges the two zeros
    return values / values.abs().max()


def int4_levels():
    """The 15 levels of symmetric absmax Int4: k / 7 for k = -7..7, ascending."""
    return torch.arange(-INT4_MAX, INT4_MAX + 1, dtype=torch.float32) / INT4_MAX


def _blocks(weight, blocksize):
    """(any shape) -> ((nb, bs) float32 blocks padded with zeros, (nb, 1) absmax, clamped like NF4's)."""
    check_weight(weight)
    check_blocksize(blocksize)
    flat = weight.detach().reshape(-1).float()
    blocks = F.pad(flat, (0, (-flat.numel()) % blocksize)).view(-1, blocksize)  # (nb, bs)
    # an all-zero block scales to zeros instead of 0/0, as bitsandbytes clamps NF4's absmax
    return blocks, block_absmax(weight, blocksize).clamp(min=1e-38)[:, None]


def _unblock(blocks, weight):
    return blocks.reshape(-1)[: weight.numel()].reshape(weight.shape)


def nearest_levels(scaled, levels):
    """Each value of `scaled` (in [-1, 1]) replaced by the nearest of the ascending `levels`.

    Bucketize against the midpoints between neighbours; a value exactly on a midpoint goes to the
    lower level, as lora.quant.nf4.nearest_level does.
    """
    levels = levels.to(scaled.device)
    midpoints = (levels[:-1] + levels[1:]) / 2
    return levels[torch.bucketize(scaled, midpoints)]


def fp4_roundtrip(weight, blocksize=64):
    """ŵ = absmax · nearest FP4 E2M1 level of w / absmax, per block of `blocksize` (QLoRA §3, Table 2's Float4 E2M1).

    Returns float32 of the weight's shape. |w − ŵ| is at most half the gap between the two levels
    around w / absmax, times absmax: absmax/12 near zero, absmax/6 between 4/6 and 1.
    """
    blocks, absmax = _blocks(weight, blocksize)
    return _unblock(nearest_levels(blocks / absmax, fp4_levels()) * absmax, weight)


def int4_roundtrip(weight, blocksize=64):
    """ŵ = round(7 · w / absmax) / 7 · absmax per block of `blocksize`: symmetric absmax Int4 (QLoRA §3, Table 2's Int4).

    Returns float32 of the weight's shape; |w − ŵ| ≤ absmax / 14, half a step. torch.round sends a
    value exactly halfway to the even k.
    """
    blocks, absmax = _blocks(weight, blocksize)
    return _unblock(torch.round(blocks / absmax * INT4_MAX) / INT4_MAX * absmax, weight)
