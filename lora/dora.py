"""DoRA: weight-decomposed low-rank adaptation (Liu et al., 2024), as plain functions on tensors.

DoRA splits a weight into a magnitude and a direction and adapts them separately (§4.1, Eq. 5):

    W' = m · (W0 + ΔW) / ‖W0 + ΔW‖,    ΔW = s B A,    m initialised to ‖W0‖

with ‖·‖ the L2 norm of each output row of the (d_out, d_in) weight (one norm per output feature,
as PEFT computes it; the paper writes ‖·‖_c, "column-wise", for its (d_in, d_out) convention), m a
trainable vector of d_out magnitudes, and s the LoRA scaling (α/r, or α/√r with rsLoRA). B = 0 at
initialisation makes W' = ‖W0‖ · W0 / ‖W0‖ = W0, so training starts at the base model.

The norm is treated as a constant in backward (§4.3): gradients reach m and, through the direction's
numerator, A and B, but none flows through ‖W0 + ΔW‖. This saves memory and, the paper shows,
changes the gradient very little.

For an embedding, PEFT takes the norm of the transposed table: pass W0 as the (embedding_dim,
num_embeddings) matrix and ΔW in that layout, and the norms are per embedding dimension.

Shape legend:
    d_in / d_out  the adapted layer's input / output sizes     r  rank
    ...           any leading dimensions (batch, time)
"""

import torch
import torch.nn.functional as F


def weight_norm(weight):
    """‖W‖ per output row: (d_out, d_in) -> (d_out,), the L2 norm over d_in (DoRA §4.1, Eq. 2's ‖·‖_c)."""
    return torch.linalg.vector_norm(weight, dim=1)


def dora_magnitude_init(weight, delta=None):
    """Initial magnitude m = ‖W0 + ΔW‖ per output row, shape (d_out,) (DoRA §4.1).

    With the default B = 0 this is ‖W0‖, as the paper initialises it. PEFT includes the adapter's ΔW
    when the adapter does not start at zero (e.g. PiSSA's A and B), which keeps W' = W0 + ΔW at
    initialisation; so does this function when `delta` is given.
    """
    w = weight if delta is None else weight + delta
    return weight_norm(w.detach()).clone()


def dora_scale(weight, delta, magnitude, detach_norm=True):
    """g = m / ‖W0 + ΔW‖, one factor per output row, shape (d_out,) (DoRA §4.1, Eq. 5).

    With detach_norm (the default) the norm is a constant in backward (DoRA §4.3): the gradient
    reaching W0 + ΔW through g is dropped and only the one through the direction's numerator is kept.

    A row with ‖W0 + ΔW‖ = 0 (a pruned unit: an all-zero row of W0, and B = 0) has no direction, and
    m = 0 there too at initialisation. We set g = 1 on such rows; any finite g gives the same merged
    row, 0, and the same output, the bias. (A deviation from PEFT, which divides 0 by 0: NaN outputs.)
    """
    norm = weight_norm(weight + delta)
    norm = norm.detach() if detach_norm else norm
    has_direction = norm > 0
    safe = torch.where(has_direction, norm, torch.ones_like(norm))  # no 0/0, not even in the branch where drops
    return torch.where(has_direction, magnitude / safe, torch.ones_like(magnitude))


def dora_weight(weight, delta, magnitude, detach_norm=True):
    """W' = m · (W0 + ΔW) / ‖W0 + ΔW‖, shape (d_out, d_in): the merged DoRA weight (DoRA §4.1, Eq. 5).

    Args:
        weight: W0, (d_out, d_in).
        delta: ΔW = s B A, (d_out, d_in).
        magnitude: m, (d_out,).
        detach_norm: treat the norm as a constant in backward (DoRA §4.3), as PEFT does.
    """
    return dora_scale(weight, delta, magnitude, detach_norm).unsqueeze(1) * (weight + delta)  # (d_out, 1) * (d_out, d_in)


def dora_unmerge_weight(merged, delta, magnitude, norm):
    """W0 = W' / g − ΔW with g = m / norm (g = 1 where norm = 0, as dora_scale): undoes dora_weight.

    `norm` must be ‖W0 + ΔW‖ as it was at merge time (PEFT caches it then): it cannot be recomputed
    from W', whose rows all have norm m. A row with m = 0 but norm > 0 was merged to zero and cannot
    be restored; LoRALinear.merge refuses to merge such an adapter in place.
    """
    has_direction = norm > 0
    g = torch.where(has_direction, magnitude / torch.where(has_direction, norm, torch.ones_like(norm)),
                    torch.ones_like(magnitude))
    return merged / g.unsqueeze(1) - delta


def dora_forward(x, weight, bias, lora_A, lora_B, scaling, magnitude, dropout=None, base_out=None):
    """(..., d_in) -> (..., d_out): the DoRA layer's output, computed the way PEFT computes it.

    Without dropout this is exactly F.linear(x, W', bias) with W' = dora_weight(W0, s B A, m), but
    W' is never built:

        y = base(x) + (g − 1) ⊙ W0 x + g ⊙ s B A x,    g = m / ‖W0 + s B A‖ (detached)

    which is g ⊙ (W0 + s B A) x + bias. With dropout, PEFT feeds the dropped input x̃ = dropout(x)
    to both correction terms but keeps the base output on the full x:

        y = W0 x + bias + (g − 1) ⊙ W0 x̃ + g ⊙ s B A x̃

    so the magnitude rescales the base's response to x̃, not to x (see docs/lora.md; the paper does not
    say how dropout combines with the decomposition). The norm uses ΔW built from detached A, B, as in PEFT.

    Args:
        x: (..., d_in).
        weight: W0 (d_out, d_in); for a quantized base, its dequantized weight.
        bias: (d_out,) or None; added once, by the base output.
        lora_A: (r, d_in); lora_B: (d_out, r); scaling: s; magnitude: m (d_out,).
        dropout: None (no dropout, or evaluation mode), or a callable applied to x for the LoRA path.
        base_out: base(x) = W0 x + bias if already computed (e.g. by a quantized base layer); else
            computed here with F.linear.
    """
    weight = weight.to(x.dtype)
    A, B = lora_A.to(x.dtype), lora_B.to(x.dtype)
    if base_out is None:
        base_out = F.linear(x, weight, bias)
    delta = scaling * (B.detach() @ A.detach())  # (d_out, r) @ (r, d_in) -> (d_out, d_in)
    g = dora_scale(weight, delta, magnitude.to(x.dtype))  # (d_out,)
    if dropout is None:
        base_part = base_out if bias is None else base_out - bias  # W0 x, without a second matmul
    else:
        x = dropout(x)
        base_part = F.linear(x, weight)  # W0 x̃
    lora_part = (x @ A.T) @ B.T * scaling  # (..., d_in) -> (..., r) -> (..., d_out)
    return base_out + (g - 1) * base_part + g * lora_part
