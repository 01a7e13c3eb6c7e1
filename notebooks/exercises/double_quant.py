"""Exercise: what NF4 costs per weight, and double quantisation of the block scales (Dettmers et al., 2023, §3).

Plain NF4 stores a 4-bit code per weight and one float32 absmax per block of `blocksize` weights.
QLoRA's double quantisation (§3, "Double Quantization") stores those absmax values again, in 8 bits:
subtract their mean (one float32 for the whole tensor), cut the centred values into second-level
blocks of `dq_blocksize` (256), and keep each as an int8 relative to its block's largest magnitude,
which is stored as one float32 per second-level block. (The paper uses 8-bit floats for the second
level; this course stores int8, as torchao does: docs/nf4.md says why.)

Copy this file to notebooks/exercises/mine/ and grade it (docs/exercises.md):

    mkdir -p notebooks/exercises/mine && cp notebooks/exercises/double_quant.py notebooks/exercises/mine/
    pytest tests/test_exercises.py --impl=mine -k double_quant

Shape legend:
    nb  first-level constants (one absmax per weight block)      nq  second-level blocks = ceil(nb / 256)
"""

import torch  # noqa: F401  (you will need it)


def bits_per_parameter(blocksize=64, dq_blocksize=None):
    """Bits stored per weight by NF4 with blocks of `blocksize` weights, codes and constants included; with
    double quantisation when `dq_blocksize` (constants per second-level block) is given, plain otherwise.
    Leave out the single float32 mean: for a large tensor it adds nothing per weight. A float.
    (QLoRA §3 gives 4.5 bits plain and about 4.127 with double quantisation, at 64 and 256.)"""
    raise NotImplementedError


def double_quantize(absmax, blocksize=256):
    """The int8 second level: centre the constants on their mean, and in each block of `blocksize`
    centred values (the last one zero-padded) round each to an int8 in [−127, 127] such that the
    block's largest magnitude maps to ±127.

    Args:
        absmax: (nb,) float32.
    Returns:
        (q (nb,) int8, scale (nq,) float32 holding each block's largest |a − mean|, mean (1,) float32).
    """
    raise NotImplementedError


def double_dequantize(q, scale, mean, blocksize=256):
    """The constants back from `double_quantize`'s output: (nb,) int8 -> (nb,) float32, each within half
    an int8 step of the original."""
    raise NotImplementedError
