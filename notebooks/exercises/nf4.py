"""Exercise: 4-bit NormalFloat (NF4) with blockwise absmax and two codes per byte (Dettmers et al., 2023, §3).

NF4 stores each weight as the index (0..15) of one of 16 levels. Pretrained weights are roughly
normal, so the levels are quantiles of N(0, 1): each level then serves about the same share of
weights ("information-theoretically optimal", §3, "4-bit NormalFloat Quantization"). The weight is cut
into blocks; each block is divided by its largest absolute value (its absmax, kept in float32), so
that it lies in [−1, 1], and each value becomes the index of the nearest level. Dequantising
multiplies the level back by its block's absmax. Two 4-bit indices share one byte.

Write each function with torch operations only (no `lora` import). Copy this file to
notebooks/exercises/mine/ and grade it (docs/exercises.md):

    mkdir -p notebooks/exercises/mine && cp notebooks/exercises/nf4.py notebooks/exercises/mine/
    pytest tests/test_exercises.py --impl=mine -k nf4

Shape legend:
    n   numel of the weight      bs  blocksize (64)      nb  blocks = ceil(n / bs)
"""

import torch  # noqa: F401  (you will need it)


def nf4_codebook():
    """The 16 NF4 levels: a (16,) float32 tensor, ascending, containing exactly −1, 0 and +1 (QLoRA §3).

    Symmetric quantiles would have no exact 0, yet zeros (padding, pruned weights) must come back
    exactly; so QLoRA builds the two halves separately and joins them at 0: 8 positive levels, the
    quantiles Φ⁻¹(p) of N(0, 1) at 8 equally spaced probabilities p above 0.5 (0.5 itself excluded) up
    to `offset`, and 7 negative ones, the mirror images of 7 equally spaced probabilities from above 0.5
    up to `offset`. The outermost probability cannot be 1 (Φ⁻¹(1) = ∞): bitsandbytes takes
    offset = ((1 − 1/30) + (1 − 1/32)) / 2, rounded to 7 decimals (0.9677083). Finally all 16 are
    divided by the largest, so the ends become −1 and +1. Φ⁻¹ is the normal distribution's icdf.
    """
    raise NotImplementedError


def pack_nibbles(codes):
    """Two 4-bit codes per byte, as bitsandbytes stores them: of each pair, the first code goes in the
    HIGH nibble (the byte's upper 4 bits) and the second in the low nibble.

    Args:
        codes: an integer tensor of even length with values in [0, 16).
    Returns:
        (len / 2,) uint8.
    """
    raise NotImplementedError


def unpack_nibbles(packed):
    """The inverse of `pack_nibbles`: (m,) uint8 -> (2m,) uint8 codes, in their original order."""
    raise NotImplementedError


def quantize_blockwise(w, blocksize=64):
    """Quantise a float tensor of any shape to NF4 codes with one absmax per block (QLoRA §3, Eq. 1).

    Take w's values in order (flattened), in blocks of `blocksize`; the last block may be partial (pad
    it with zeros, which never raise an absmax). Each value's code is its nearest level after dividing
    by its block's absmax; a block of zeros has absmax 0 and all its values are level 0 (no 0/0).

    Returns:
        packed: (ceil(n / 2),) uint8, the n codes in order, packed by `pack_nibbles` (for odd n the last
            byte's low nibble is padding).
        absmax: (nb,) float32.
    """
    raise NotImplementedError


def dequantize_blockwise(packed, absmax, blocksize, shape):
    """Each weight back as its level times its block's absmax: a float32 tensor of `shape`
    (the inverse of quantize_blockwise, up to the rounding to a level).

    Args:
        packed: (ceil(n / 2),) uint8. absmax: (nb,) float32. blocksize: as used to quantise.
        shape: the original shape; n = its number of elements.
    """
    raise NotImplementedError
