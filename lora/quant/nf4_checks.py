"""Checks of NF4 inputs and stored NF4 weights: everything that must hold before a weight is (de)quantised.

Kept apart from lora/quant/nf4.py, which holds the quantisation maths; an NF4Weight is read here only
through its fields (packed, absmax, absmax_q, absmax_scale, absmax_mean, shape, dtype, blocksize).
"""

import math

import torch

from lora.checks import check_int, is_int
from lora.quant.double_quant import num_dq_blocks


def check_blocksize(blocksize):
    """Raise ValueError unless `blocksize` is a positive even integer (a block must end on a byte)."""
    if check_int("blocksize", blocksize) % 2:
        raise ValueError(f"blocksize={blocksize!r}: must be a positive even integer, e.g. 64")


def check_weight(weight):
    """Raise ValueError unless `weight` is a non-empty, finite float tensor within float32's range."""
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise ValueError(f"weight dtype {weight.dtype} is not floating point; NF4 quantises float tensors")
    if weight.numel() == 0:
        raise ValueError(f"weight of shape {tuple(weight.shape)} is empty; nothing to quantise")
    finite = torch.isfinite(weight)
    if not finite.all():
        bad = weight.detach().reshape(-1)[~finite.reshape(-1)]
        raise ValueError(f"weight has {bad.numel()} non-finite values (first: {bad[0].item()}); NaN and inf cannot be scaled")
    biggest = weight.detach().abs().max().item()
    if biggest > torch.finfo(torch.float32).max:  # a float64 1e300 would become an inf absmax
        raise ValueError(f"weight holds {biggest:.3g}, beyond float32's range; NF4 scales are float32")


def _require(cond, message):
    if not cond:
        raise ValueError(f"inconsistent NF4Weight: {message}")


_SIGNED = {"absmax": False, "absmax_scale": False, "absmax_mean": True}  # scales that may be negative


def check_scales(q_or_tensors, where="NF4Weight"):
    """Raise ValueError naming the first scale (absmax, absmax_scale, absmax_mean) that holds NaN or inf,
    or that is negative where a maximum of |values| must be >= 0.

    Accepts an NF4Weight or a dict of its fields. A non-finite scale would turn a whole block of 64
    weights (or 256 blocks, for a second-level scale) into NaN without a word.
    """
    tensors = q_or_tensors if isinstance(q_or_tensors, dict) else q_or_tensors.tensors()
    for name, signed in _SIGNED.items():
        t = tensors.get(name)
        if t is None or not t.is_floating_point():
            continue
        if not torch.isfinite(t).all():
            raise ValueError(f"{where}: {name} holds {(~torch.isfinite(t)).sum().item()} non-finite value(s) (NaN or inf)")
        if not signed and (t < 0).any():
            raise ValueError(f"{where}: {name} holds negative values; a block's max |w| is >= 0")


def check_nf4_weight(q, values=True):
    """Raise ValueError unless q's stored tensors fit its recorded shape, dtype and blocksize.

    Catches tampered or mixed-up objects (a truncated `packed`, scales from another tensor) before
    they turn into a wrong weight or an index error deep in dequantisation. With `values` the scales
    are also read (see check_scales): a host sync on a GPU, so per-forward callers that checked once
    at construction or load pass False.
    """
    _require(all(isinstance(t, torch.Tensor) for t in q.tensors().values()), "stored fields must be tensors or None")
    check_blocksize(q.blocksize)
    _require(all(is_int(d) and d >= 0 for d in q.shape) and q.numel > 0,
             f"shape={q.shape!r} must be a tuple of sizes with at least one element")
    _require(isinstance(q.dtype, torch.dtype) and q.dtype.is_floating_point, f"dtype={q.dtype!r} is not a float dtype")
    n, nb = q.numel, math.ceil(q.numel / q.blocksize)
    _require(q.packed.dtype == torch.uint8 and q.packed.numel() == (n + 1) // 2,
             f"packed has {q.packed.numel()} {q.packed.dtype} values; shape {q.shape} needs {(n + 1) // 2} uint8")
    if not q.double_quant:
        _require(q.absmax is not None and q.absmax.dtype == torch.float32 and q.absmax.numel() == nb,
                 f"absmax must be {nb} float32 values (one per block of {q.blocksize}), got "
                 f"{None if q.absmax is None else (q.absmax.numel(), q.absmax.dtype)}")
        if values:
            check_scales(q)
        return
    nq = num_dq_blocks(nb, q.dq_blocksize)
    _require(q.absmax is None, "absmax and absmax_q are both set; keep one")
    _require(q.absmax_q.dtype == torch.int8 and q.absmax_q.numel() == nb,
             f"absmax_q has {q.absmax_q.numel()} {q.absmax_q.dtype} values; {nb} int8 expected")
    _require(q.absmax_scale is not None and q.absmax_scale.dtype == torch.float32 and q.absmax_scale.numel() == nq,
             f"absmax_scale must be {nq} float32 values (one per {q.dq_blocksize} constants)")
    _require(q.absmax_mean is not None and q.absmax_mean.dtype == torch.float32 and q.absmax_mean.numel() == 1,
             "absmax_mean must be one float32 value")
    if values:
        check_scales(q)
