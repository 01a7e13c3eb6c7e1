"""Exercise: DoRA's forward pass: a magnitude and a direction per output unit (Liu et al., 2024, §4.1 and §4.3).

DoRA decomposes a weight into a magnitude and a direction and adapts them separately: the direction
is that of W0 + ΔW with ΔW = (α / r) · B · A as in LoRA, and a trainable vector m gives every output
unit its length (§4.1, Eq. 5), W' = m · (W0 + ΔW) / ‖W0 + ΔW‖. The norm ‖·‖ is taken per output unit,
over its d_in weights (one row of PyTorch's (d_out, d_in) weight; the paper, writing the transposed
layout, says "column-wise"). m starts at ‖W0‖, so that with B = 0 the layer is the base at step 0.
To save memory, §4.3 treats the norm as a constant in backward: gradients reach m, A and B through the
numerator only.

Copy this file to notebooks/exercises/mine/ and grade it (docs/exercises.md):

    mkdir -p notebooks/exercises/mine && cp notebooks/exercises/dora.py notebooks/exercises/mine/
    pytest tests/test_exercises.py --impl=mine -k dora

Shape legend:
    W (d_out, d_in)   b (d_out,) or None   A (r, d_in)   B (d_out, r)   m (d_out,)   x (..., d_in)
"""

import torch  # noqa: F401  (you will need it)


def weight_norm(W):
    """The norm of each output unit's weights: (d_out, d_in) -> (d_out,) (DoRA §4.1; m's initial value)."""
    raise NotImplementedError


def dora_forward(x, W, b, A, B, alpha, r, m):
    """The DoRA layer's output W' x + b at every position: (..., d_in) -> (..., d_out) (DoRA §4.1, Eq. 5),
    differentiable in A, B and m, with the norm a constant in backward (§4.3). The bias is not scaled by m."""
    raise NotImplementedError
