"""Worked solution of notebooks/exercises/nf4.py: the NF4 codebook, blockwise absmax and nibble packing (QLoRA §3)."""

import math

import torch
import torch.nn.functional as F

OFFSET = round(((1 - 1 / 30) + (1 - 1 / 32)) / 2, 7)  # 0.9677083, the outermost quantile's probability


def nf4_codebook():
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    # equal probability steps from OFFSET in to 0.5 (left out: that is the level 0), in float32 as
    # bitsandbytes takes them, so that these levels are its table to the last bit
    positive = normal.icdf(torch.linspace(OFFSET, 0.5, 9)[:-1].double()).float()   # 8 levels > 0
    negative = -normal.icdf(torch.linspace(OFFSET, 0.5, 8)[:-1].double()).float()  # 7 levels < 0
    levels = torch.cat([negative, torch.zeros(1), positive]).sort().values
    return levels / levels.max()  # (16,) float32, from -1 to +1


def pack_nibbles(codes):
    codes = codes.reshape(-1).to(torch.uint8)
    return codes[0::2] * 16 + codes[1::2]  # the first code of each pair in the high nibble


def unpack_nibbles(packed):
    packed = packed.reshape(-1)
    return torch.stack([packed // 16, packed % 16], dim=1).reshape(-1)  # (m, 2) -> (2m,)


def _blocks(w, blocksize):
    """(any shape, n values) -> (nb, bs), zero-padded at the end."""
    flat = w.reshape(-1).float()
    return F.pad(flat, (0, (-flat.numel()) % blocksize)).view(-1, blocksize)


def quantize_blockwise(w, blocksize=64):
    blocks = _blocks(w, blocksize)                                   # (nb, bs)
    absmax = blocks.abs().amax(dim=1)                                # (nb,)
    scaled = blocks / torch.where(absmax > 0, absmax, 1.0)[:, None]  # an all-zero block stays 0, not 0/0
    codes = (scaled[..., None] - nf4_codebook()).abs().argmin(dim=-1).reshape(-1)[: w.numel()]  # (n,)
    if codes.numel() % 2:
        codes = F.pad(codes, (0, 1))  # a padding code in the low nibble of the last byte
    return pack_nibbles(codes), absmax


def dequantize_blockwise(packed, absmax, blocksize, shape):
    n = math.prod(shape)
    codes = unpack_nibbles(packed)[:n].long()                        # (n,)
    scale = absmax.float().repeat_interleave(blocksize)[:n]          # each value's block absmax
    return (nf4_codebook()[codes] * scale).reshape(shape)
