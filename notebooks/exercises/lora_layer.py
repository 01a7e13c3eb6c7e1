"""Exercise: the LoRA layer's forward pass and merge (Hu et al., 2021, §4.1), as plain functions over tensors.

LoRA keeps a pretrained weight W frozen and learns a low-rank update ΔW = (α / r) · B · A. The
adapted layer computes h = W x + b + ΔW x for each input vector x (§4.1, Eq. 3); merging writes ΔW
into W, so that the merged layer computes the same h with no extra cost at inference.

Write each function with torch operations only (no `lora` import: that is the answer). Copy this file
to notebooks/exercises/mine/ and grade it (docs/exercises.md):

    mkdir -p notebooks/exercises/mine && cp notebooks/exercises/lora_layer.py notebooks/exercises/mine/
    pytest tests/test_exercises.py --impl=mine -k lora_layer

Shape legend (PyTorch's nn.Linear layout, the paper's A and B):
    W (d_out, d_in)   b (d_out,) or None   A (r, d_in)   B (d_out, r)   x (..., d_in)
    ...  any leading dimensions (batch, time): every position is one input vector
"""

import torch  # noqa: F401  (you will need it)


def delta_weight(A, B, alpha, r):
    """The update ΔW of the layer's weight (LoRA §4.1).

    Args:
        A: (r, d_in). B: (d_out, r). alpha: α > 0. r: the rank, a positive int.
    Returns:
        (d_out, d_in), the layout of W; its rank is at most r.
    """
    raise NotImplementedError


def lora_forward(x, W, b, A, B, alpha, r):
    """The adapted layer's output h for every input vector of x (LoRA §4.1, Eq. 3): (..., d_in) -> (..., d_out).

    `b` may be None (a layer without bias). The point of LoRA is that this is cheap: compute it without
    forming any (d_out, d_in) matrix besides W, in about r·(d_in + d_out) extra multiply-adds per vector.
    """
    raise NotImplementedError


def merge(W, A, B, alpha, r):
    """The merged weight W', a new (d_out, d_in) tensor such that the plain linear layer (W', b) computes
    what lora_forward(x, W, b, A, B, alpha, r) computes (LoRA §4.1, "No additional inference latency").
    W itself must be left unchanged."""
    raise NotImplementedError


def unmerge(W_merged, A, B, alpha, r):
    """The inverse of `merge`: W back from W' (exact up to floating-point rounding)."""
    raise NotImplementedError
