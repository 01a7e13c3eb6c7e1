"""Exercise: why B starts at zero, through the gradients of A and B (Hu et al., 2021, §4.1).

LoRA's low-rank path adds h = s · B A x to a layer's output (s = α / r) and starts training at
exactly the pretrained model: one factor is random, the other zero (§4.1, "We use a random Gaussian
initialization for A and zero for B"). Derive, with the chain rule, the gradients of a loss L with
respect to A and to B, given g = ∂L/∂h at every position, and see which of them vanishes at the start
and what would happen were both factors zero.

Copy this file to notebooks/exercises/mine/ and grade it (docs/exercises.md):

    mkdir -p notebooks/exercises/mine && cp notebooks/exercises/zero_init.py notebooks/exercises/mine/
    pytest tests/test_exercises.py --impl=mine -k zero_init

Shape legend:
    A (r, d_in)   B (d_out, r)   x (..., d_in)   grad_out = g (..., d_out)
    ...  any leading dimensions (batch, time); a parameter's gradient sums over all of them
"""

import torch  # noqa: F401  (you will need it)


def init_lora(d_in, d_out, r):
    """(A, B) initialised as the reference implementations do (loralib, PEFT), float32.

    A (r, d_in) is drawn from nn.Linear's default initialisation, Kaiming-uniform with a = √5: work out
    the interval it is uniform on for a layer with d_in inputs. B (d_out, r) is zero, so that ΔW = 0 at
    step 0. Draw from torch's global random generator (the tests seed it). (The paper draws A from a
    Gaussian; loralib and PEFT use the uniform, and so does this course.)
    """
    raise NotImplementedError


def lora_grads(x, A, B, grad_out, alpha, r):
    """(∂L/∂A, ∂L/∂B) of the low-rank path h = (α / r) · B A x, at every position of x at once.

    Args:
        x: (..., d_in) the layer's input. grad_out: (..., d_out), g = ∂L/∂h at each position.
        A: (r, d_in). B: (d_out, r). alpha: α. r: the rank.
    Returns:
        (grad_A (r, d_in), grad_B (d_out, r)), from your formulas, with matrix products (not autograd).
    """
    raise NotImplementedError
