"""Exercise: what NF4 costs per weight, and double quantisation of the block scales (Dettmers et al., 2023, §3).

Plain NF4 stores 4 bits per weight plus one float32 absmax per block of `blocksize` weights. Double
quantisation stores each absmax in 8 bits instead, after subtracting their mean, plus one float32 scale
per `dq_blocksize` absmax values:

    plain:         4 + 32 / blocksize                                  (4.5 at blocksize 64)
    double quant:  4 + 8 / blocksize + 32 / (blocksize · dq_blocksize)  (≈ 4.127 at 64 and 256)

(the single float32 mean adds 32 / n bits for the whole tensor; leave it out: it vanishes for large n).

Grade with `pytest tests/test_exercises.py --impl=mine -k double_quant` (see docs/exercises.md).

Shape legend:
    nb  first-level constants (one absmax per weight block)      nq  second-level blocks = ceil(nb / 256)
"""

import torch  # noqa: F401  (you will need it)


def bits_per_parameter(blocksize=64, dq_blocksize=None):
    """Bits stored per weight by NF4 with blocks of `blocksize`; with double quantisation when
    `dq_blocksize` (constants per second-level block, 256 in QLoRA) is given, plain otherwise. A float."""
    raise NotImplementedError


def double_quantize(absmax, blocksize=256):
    """Quantise float32 constants to int8 after centring: q = round(127 · (a − ā) / s_k).

    ā is the mean of all constants; the centred values are cut into blocks of `blocksize` (the last one
    zero-padded) and s_k is the max |a − ā| of block k, so every q lies in [−127, 127].

    Args:
        absmax: (nb,) float32.
    Returns:
        (q (nb,) int8, scale (nq,) float32 holding the s_k, mean (1,) float32 holding ā).
    """
    raise NotImplementedError


def double_dequantize(q, scale, mean, blocksize=256):
    """â = q · s_k / 127 + ā, the inverse of `double_quantize`: (nb,) int8 -> (nb,) float32."""
    raise NotImplementedError
