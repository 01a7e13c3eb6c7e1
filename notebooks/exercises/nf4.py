"""Exercise: 4-bit NormalFloat (NF4) with blockwise absmax and two codes per byte (Dettmers et al., 2023, §3).

    absmax_b = max |w| over block b        code = argmin_j |w / absmax_b − level_j|
    ŵ = level[code] · absmax_b

Write each function with torch operations only (no `lora` import). Grade with

    pytest tests/test_exercises.py --impl=mine -k nf4

after copying this file to notebooks/exercises/mine/ (see docs/exercises.md).

Shape legend:
    n   numel of the weight      bs  blocksize (64)      nb  blocks = ceil(n / bs)
"""

import torch  # noqa: F401  (you will need it)


def nf4_codebook():
    """The 16 NF4 levels: float32, ascending, containing exactly −1, 0 and +1 (QLoRA §3).

    The levels are quantiles of N(0, 1) at equally spaced probabilities, one half at a time so that 0 is
    a level: with offset = ((1 − 1/30) + (1 − 1/32)) / 2 rounded to 7 decimals (0.9677083),
        8 positive levels: Φ⁻¹(p) for p in linspace(offset, 0.5, 9) without its last point (0.5),
        7 negative levels: −Φ⁻¹(p) for p in linspace(offset, 0.5, 8) without its last point,
    plus 0; all 16 sorted and divided by the largest, so the ends become −1 and +1.
    Φ⁻¹ is torch.distributions.Normal(0., 1.).icdf. Returns a (16,) tensor.
    """
    raise NotImplementedError


def pack_nibbles(codes):
    """Two 4-bit codes per byte, the FIRST code in the HIGH nibble: [a, b, c, d] -> [16a + b, 16c + d].

    Args:
        codes: an integer tensor of even length with values in [0, 16).
    Returns:
        (len / 2,) uint8.
    """
    raise NotImplementedError


def unpack_nibbles(packed):
    """The inverse of `pack_nibbles`: (m,) uint8 -> (2m,) uint8 codes, [16a + b] -> [a, b]."""
    raise NotImplementedError


def quantize_blockwise(w, blocksize=64):
    """Quantise a float tensor of any shape to NF4 codes with one absmax per block.

    Flatten w to (n,), zero-pad it to a multiple of `blocksize`, view it as (nb, bs), take each block's
    absmax (zeros never raise it), map w / absmax to the nearest level (an all-zero block: absmax 0,
    every value to level 0), and pack the codes two per byte.

    Returns:
        packed: (ceil(n / 2),) uint8, the codes of the n values in order, packed by `pack_nibbles`
            (for odd n the last byte's low nibble is padding).
        absmax: (nb,) float32.
    """
    raise NotImplementedError


def dequantize_blockwise(packed, absmax, blocksize, shape):
    """ŵ = level[code] · absmax of its block, as a float32 tensor of `shape` (the inverse of quantize_blockwise).

    Args:
        packed: (ceil(n / 2),) uint8. absmax: (nb,) float32. blocksize: as used to quantise.
        shape: the original shape; n = its number of elements.
    """
    raise NotImplementedError
