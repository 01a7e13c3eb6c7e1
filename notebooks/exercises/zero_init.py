"""Exercise: why B starts at zero, through the gradients of A and B (Hu et al., 2021, §4.1).

With u = x Aᵀ (the r-wide intermediate), s = α / r and g = ∂L/∂h the gradient arriving at the
layer's output, the low-rank path h = s · u Bᵀ has

    ∂L/∂B = s · gᵀ u = s · Σ_n g_n (A x_n)ᵀ        (d_out, r)
    ∂L/∂A = s · (g B)ᵀ x = s · Σ_n Bᵀ g_n x_nᵀ      (r, d_in)

(sums over every leading position n). At B = 0 the second is zero while the first is not: B moves on
step 1, A on step 2. Were both zero, neither would ever move.

Grade with `pytest tests/test_exercises.py --impl=mine -k zero_init` (see docs/exercises.md).

Shape legend:
    A (r, d_in)   B (d_out, r)   x (..., d_in)   grad_out = g (..., d_out)
"""

import torch  # noqa: F401  (you will need it)


def init_lora(d_in, d_out, r):
    """(A, B) initialised as the reference implementations do (loralib, PEFT).

    A (r, d_in) is Kaiming-uniform with a = √5, which is nn.Linear's default: uniform on
    [−1/√d_in, 1/√d_in]. B (d_out, r) is all zeros, so ΔW = B A = 0 and training starts exactly at the
    base model. Draw from torch's global random generator (the tests seed it). float32.
    """
    raise NotImplementedError


def lora_grads(x, A, B, grad_out, alpha, r):
    """(∂L/∂A, ∂L/∂B) of the low-rank path h = (α / r) · (x Aᵀ) Bᵀ, by the formulas above.

    Args:
        x: (..., d_in) the layer's input. grad_out: (..., d_out), g = ∂L/∂h.
        A: (r, d_in). B: (d_out, r). alpha: α. r: the rank.
    Returns:
        (grad_A (r, d_in), grad_B (d_out, r)), written with matrix products, not with autograd.
        Hint: flatten the leading dimensions first: (..., d) -> (N, d).
    """
    raise NotImplementedError
