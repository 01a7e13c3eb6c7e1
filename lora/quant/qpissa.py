"""QPiSSA: PiSSA's principal part kept in float beside an NF4 residual (Meng et al., 2024, §4).

Plain QLoRA stores NF4(W0). QPiSSA stores NF4(W0 − s B A) and keeps s B A = U_r S_r V_rᵀ, the
top-r part of W0's SVD, in full precision as the adapter's starting point. The residual has the large
singular values removed, so its NF4 blocks have smaller absmax and finer steps.

Shape legend: d_in / d_out the layer's sizes, r rank, s scaling.
"""

import torch

from lora.init import pissa_init
from lora.quant.nf4 import dequantize_nf4, quantize_nf4


def pissa_quantization_error(weight, rank, scaling, blocksize=64, niter=None):
    """NF4's reconstruction error without and with PiSSA (QPiSSA, PiSSA §4).

    Returns the Frobenius norms (‖W0 − deq(NF4(W0))‖, ‖W0 − (deq(NF4(W_res)) + s B A)‖) for the
    (d_out, d_in) weight W0 and PiSSA's A (r, d_in), B (d_out, r) of rank r and scaling s.
    """
    A, B, residual = pissa_init(weight, rank, scaling, niter)
    w = weight.detach().to(A.dtype)
    plain = dequantize_nf4(quantize_nf4(weight.detach(), blocksize), dtype=A.dtype)
    rebuilt = dequantize_nf4(quantize_nf4(residual, blocksize), dtype=A.dtype) + scaling * (B @ A)
    return torch.linalg.norm(w - plain).item(), torch.linalg.norm(w - rebuilt).item()
