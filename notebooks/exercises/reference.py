"""The exercises' interface, answered by the library: what `pytest tests/test_exercises.py` grades by default.

Every function of the skeletons in this folder (lora_layer.py, zero_init.py, params.py, nf4.py,
double_quant.py, adapter_arithmetic.py) is here with the same signature, built on `lora/`, so the
property tests that grade a student's file also prove the library, on every test run. The adapter
arithmetic has no library counterpart in this interface and is written from its math.
"""

import torch
import torch.nn as nn

from lora.quant.double_quant import double_dequantize as _double_dequantize
from lora.quant.double_quant import double_quantize as _double_quantize
from lora.layer import LoRALinear
from lora.quant.nf4 import NF4Weight, dequantize_nf4, quantize_nf4
from lora.quant.nf4 import nf4_codebook as _nf4_codebook
from lora.quant.nf4 import pack_nibbles as _pack_nibbles
from lora.quant.nf4 import unpack_nibbles as _unpack_nibbles
from lora.params import count_parameters

# --- lora_layer --------------------------------------------------------------------------------


def _layer(W, b, A, B, alpha, r):
    """A LoRALinear holding copies of the given tensors: (d_out, d_in) W, (r, d_in) A, (d_out, r) B."""
    d_out, d_in = W.shape
    layer = LoRALinear(nn.Linear(d_in, d_out, bias=b is not None, dtype=W.dtype), rank=r, alpha=alpha)
    with torch.no_grad():
        layer.base.weight.copy_(W)
        if b is not None:
            layer.base.bias.copy_(b)
        layer.lora_A.copy_(A)
        layer.lora_B.copy_(B)
    return layer


def delta_weight(A, B, alpha, r):
    W = torch.zeros(B.shape[0], A.shape[1], dtype=A.dtype)
    return _layer(W, None, A, B, alpha, r).delta_weight().detach()


def lora_forward(x, W, b, A, B, alpha, r):
    with torch.no_grad():
        return _layer(W, b, A, B, alpha, r)(x)


def merge(W, A, B, alpha, r):
    layer = _layer(W, None, A, B, alpha, r)
    layer.merge()
    return layer.base.weight.detach().clone()


def unmerge(W_merged, A, B, alpha, r):
    layer = _layer(W_merged, None, A, B, alpha, r)
    layer.merged_adapters = list(layer.active_adapters)  # W_merged already holds their ΔW
    layer.unmerge()
    return layer.base.weight.detach().clone()


# --- zero_init ---------------------------------------------------------------------------------


def init_lora(d_in, d_out, r):
    layer = LoRALinear(nn.Linear(d_in, d_out), rank=r, alpha=r)
    return layer.lora_A.detach().clone(), layer.lora_B.detach().clone()


def lora_grads(x, A, B, grad_out, alpha, r):
    layer = _layer(torch.zeros(B.shape[0], A.shape[1], dtype=A.dtype), None, A, B, alpha, r)
    layer(x).backward(grad_out)
    return layer.lora_A.grad, layer.lora_B.grad


# --- params ------------------------------------------------------------------------------------


def lora_param_count(d_in, d_out, r):
    with torch.device("meta"):  # shapes only, no storage
        trainable, _ = count_parameters(LoRALinear(nn.Linear(d_in, d_out), rank=r, alpha=r))
    return trainable


def lora_model_param_count(layer_shapes, r):
    return sum(lora_param_count(d_in, d_out, r) for d_in, d_out in layer_shapes)


# --- nf4 ---------------------------------------------------------------------------------------


def nf4_codebook():
    return _nf4_codebook()


def pack_nibbles(codes):
    return _pack_nibbles(codes)


def unpack_nibbles(packed):
    return _unpack_nibbles(packed)


def quantize_blockwise(w, blocksize=64):
    q = quantize_nf4(w, blocksize=blocksize)
    return q.packed, q.absmax


def dequantize_blockwise(packed, absmax, blocksize, shape):
    q = NF4Weight(packed=packed, absmax=absmax, absmax_q=None, absmax_scale=None, absmax_mean=None,
                  shape=tuple(shape), dtype=torch.float32, blocksize=blocksize)
    return dequantize_nf4(q)


# --- double_quant ------------------------------------------------------------------------------


def bits_per_parameter(blocksize=64, dq_blocksize=None):
    # the formula; tests/test_exercises.py checks it against the bytes lora.quant.nf4 actually stores
    if dq_blocksize is None:
        return 4 + 32 / blocksize
    return 4 + 8 / blocksize + 32 / (blocksize * dq_blocksize)


def double_quantize(absmax, blocksize=256):
    return _double_quantize(absmax, blocksize)


def double_dequantize(q, scale, mean, blocksize=256):
    return _double_dequantize(q, scale, mean, blocksize)


# --- adapter_arithmetic ------------------------------------------------------------------------


def combine_cat(As, Bs, weights, scalings):
    # w_i·s_i goes into A_i's rows: (Σ r_i, d_in) and (d_out, Σ r_i), whose product is Σ w_i s_i B_i A_i
    A = torch.cat([w * s * A_i for A_i, w, s in zip(As, weights, scalings, strict=True)], dim=0)
    B = torch.cat(list(Bs), dim=1)
    return A, B


def combine_svd(delta, rank):
    # Eckart–Young: the truncated SVD is the best rank-r approximation in the Frobenius norm
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)  # (d_out, k), (k,), (k, d_in)
    return Vh[:rank].clone(), U[:, :rank] * S[:rank]          # A (rank, d_in), B (d_out, rank)
