"""4-bit NormalFloat (NF4) blockwise quantisation, QLoRA (Dettmers et al., 2023) §3, in plain torch.

A weight tensor is cut into blocks of `blocksize` (64) values. Each block is divided by its absmax,
so it lies in [-1, 1], and each value becomes the index (0..15) of the nearest of 16 levels that are
quantiles of N(0, 1). Two indices share a byte. Dequantising is a table lookup times the absmax:

    code = argmin_j |w / absmax − level_j|       ŵ = level[code] · absmax

The bytes and absmax equal bitsandbytes' `quantize_4bit(w, quant_type="nf4")` on the same input
(checked against a committed fixture made with bitsandbytes 0.50.2).

Shape legend:
    n     numel of the original weight          bs  blocksize (64)
    nb    blocks = ceil(n / bs)                 nq  second-level blocks = ceil(nb / 256)
"""

import dataclasses
import math

import torch
import torch.nn.functional as F

from lora.checks import check_int
from lora.quant.double_quant import DQ_BLOCKSIZE, double_dequantize, double_quantize
from lora.quant.nf4_checks import check_blocksize, check_nf4_weight, check_scales, check_weight

DEFAULT_CHUNK = 2**22  # weights quantised per step: bounds the temporaries (about 16 bytes per weight)


def nf4_offset():
    """The outermost quantile position, 0.9677083 (the value bitsandbytes' create_normal_map uses).

    The levels are quantiles Φ⁻¹(p) of N(0, 1) and Φ⁻¹(1) = ∞, so the outermost one needs p < 1.
    Splitting [0, 1] into n equal-probability bins and taking the centre of the last gives
    p = 1 − 1/(2n). NF4 sits between two counts: 16 levels, but 15 distinct-probability steps once the
    two halves share their zero. bitsandbytes takes the mean of the two positions,
    ((1 − 1/30) + (1 − 1/32)) / 2 = 0.96770833…, written with 7 decimals. We round the same way: the
    levels hang on this number to the last float32 bit (the unrounded value moves them by up to 8 ulps).
    """
    return round(((1 - 1 / (2 * 15)) + (1 - 1 / (2 * 16))) / 2, 7)


def nf4_codebook():
    """The 16 NF4 levels, float32, ascending, with exactly -1, 0 and 1 (QLoRA §3, "4-bit NormalFloat").

    Symmetric quantiles of N(0, 1) have no exact zero, yet zero (padding, pruned weights) must be
    exact. So the two halves are built separately: 8 positive quantiles at probabilities
    linspace(offset, 0.5, 9)[:-1] and 7 negative ones at linspace(offset, 0.5, 8)[:-1] (negated),
    joined at 0 and divided by the largest, which maps both ends to ±1. The positive half gets the
    extra level, hence the asymmetry. Each step follows bitsandbytes' create_normal_map so the result is
    bit-identical to its table: probabilities in float32, Φ⁻¹ in float64, rounded to float32, then
    normalised in float32.
    """
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    positive = normal.icdf(torch.linspace(nf4_offset(), 0.5, 9)[:-1].double()).float()   # 8 levels > 0
    negative = -normal.icdf(torch.linspace(nf4_offset(), 0.5, 8)[:-1].double()).float()  # 7 levels < 0
    levels = torch.cat([negative, torch.zeros(1), positive]).sort().values
    return levels / levels.max()


_CODEBOOK = nf4_codebook()
_MIDPOINTS = (_CODEBOOK[:-1] + _CODEBOOK[1:]) / 2  # (15,) decision boundaries, float32 as bitsandbytes
# byte -> (level of its high nibble, level of its low nibble): one lookup per byte dequantises two weights
_BYTE_LEVELS = torch.stack([_CODEBOOK[torch.arange(256) >> 4], _CODEBOOK[torch.arange(256) & 0xF]], dim=1)  # (256, 2)
_ON_DEVICE = {}  # (table name, device) -> copy, so a CUDA forward pass does not re-upload the tables


def _table(name, device):
    key = (name, device)
    if key not in _ON_DEVICE:
        _ON_DEVICE[key] = {"midpoints": _MIDPOINTS, "byte_levels": _BYTE_LEVELS}[name].to(device)
    return _ON_DEVICE[key]


def _split_blocks(flat, blocksize):
    """(n,) -> ((nf, bs) full blocks, (n - nf·bs,) tail): a view and a slice, no padding, so even a
    blocksize far above n allocates nothing."""
    nf = flat.numel() // blocksize
    return flat[: nf * blocksize].view(nf, blocksize), flat[nf * blocksize:]


def block_absmax(weight, blocksize=64):
    """absmax_b = max over block b of |w|: (any shape, n values) -> (nb,) float32 (QLoRA §3, Eq. 1)."""
    check_blocksize(blocksize)
    full, tail = _split_blocks(weight.detach().reshape(-1).float(), blocksize)
    absmax = full.abs().amax(dim=1)
    return torch.cat([absmax, tail.abs().amax().reshape(1)]) if tail.numel() else absmax


def pack_nibbles(codes):
    """[a, b, c, d] -> [a·16 + b, c·16 + d]: two 4-bit codes per byte, the first in the HIGH nibble.

    The order is bitsandbytes'. `codes` is an even-length integer tensor with values in [0, 16);
    returns uint8 of half the length.
    """
    if codes.dtype.is_floating_point or codes.dtype == torch.bool or codes.numel() % 2:
        raise ValueError(f"codes must be an even-length integer tensor, got {codes.dtype} with {codes.numel()} elements")
    codes = codes.reshape(-1).to(torch.uint8)  # narrow first: the shifts then touch 1 byte per code, not 4
    return (codes[0::2] << 4) | codes[1::2]


def unpack_nibbles(packed):
    """[ab, cd] -> [a, b, c, d], the inverse of `pack_nibbles`: uint8 (m,) -> uint8 (2m,)."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"packed codes must be uint8, got {packed.dtype}")
    return torch.stack([packed.reshape(-1) >> 4, packed.reshape(-1) & 0xF], dim=1).reshape(-1)  # (m, 2) -> (2m,)


def nearest_level(scaled):
    """Index of the nearest NF4 level for values in [-1, 1]: bucketize against the 15 midpoints.

    A value exactly on a midpoint goes to the LOWER level (bucketize's right=False counts the boundaries
    strictly below it), which is what bitsandbytes' kernels do (`x > midpoint` picks the upper one).
    """
    return torch.bucketize(scaled, _table("midpoints", scaled.device), out_int32=True)


def _codes_for_blocks(blocks, absmax):
    """(c, bs) float32 full blocks and their (c,) absmax -> (c·bs,) int32 codes.

    Scaling multiplies by the float32 reciprocal 1/absmax, as bitsandbytes' CUDA kernel and its torch
    reference do (the final, partial block is divided instead: _codes_for_tail). An absmax below 1e-38
    is clamped as bitsandbytes does, so an all-zero block scales to zeros (code 7, level 0.0) instead of 0/0.
    """
    safe = absmax.clamp(min=1e-38)
    return nearest_level(blocks * (1.0 / safe)[:, None]).reshape(-1)  # (c, bs) in [-1, 1] -> (c·bs,)


def _codes_for_tail(tail, absmax):
    """The codes of a final, partial block: bitsandbytes' torch reference divides by its absmax there.

    x·(1/a) and x/a can differ by one ulp, which moves a code only for a value on a midpoint, but we
    copy that too so every byte matches. An odd count gets one more code, 7 (level 0.0), as the zero
    bitsandbytes pads with, so the nibbles fill whole bytes.
    """
    codes = nearest_level(tail / absmax.clamp(min=1e-38))
    return F.pad(codes, (0, tail.numel() % 2), value=7)


@dataclasses.dataclass
class NF4Weight:
    """A weight quantised to NF4: the stored tensors plus what is needed to rebuild it.

    Without double quantisation `absmax` holds the scales; with it `absmax` is None and the scales
    are `absmax_q`, `absmax_scale` and `absmax_mean` (see lora.quant.double_quant).
    """

    packed: torch.Tensor                       # (ceil(n/2),) uint8, two codes per byte, first in the high nibble
    absmax: torch.Tensor | None                # (nb,) float32, or None when double-quantised
    absmax_q: torch.Tensor | None              # (nb,) int8: round(127·(absmax − mean)/scale)
    absmax_scale: torch.Tensor | None          # (nq,) float32, max |absmax − mean| per 256 constants
    absmax_mean: torch.Tensor | None           # (1,) float32, the mean of absmax
    shape: tuple                               # original shape
    dtype: torch.dtype                         # original dtype, restored by dequantize_nf4
    blocksize: int = 64
    dq_blocksize: int = DQ_BLOCKSIZE

    @property
    def double_quant(self):
        return self.absmax_q is not None

    @property
    def numel(self):
        return math.prod(self.shape)

    def tensors(self):
        """{name: tensor} of everything stored (None fields left out): what storage is counted from."""
        names = ("packed", "absmax", "absmax_q", "absmax_scale", "absmax_mean")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}


def quantize_nf4(weight, blocksize=64, double_quant=False, chunk_size=None):
    """Quantise a float tensor to NF4 with per-block absmax (QLoRA §3).

    Args:
        weight: a non-empty, finite floating-point tensor of any shape; it is rounded to float32 first
            (as bitsandbytes does), so float64 inputs lose their extra bits before quantisation.
        blocksize: weights per absmax, a positive even integer (64 in QLoRA).
        double_quant: also quantise the absmax constants to int8 in blocks of 256 (QLoRA §3).
        chunk_size: weights processed per step, a multiple of `blocksize`; None takes the largest
            multiple of blocksize up to DEFAULT_CHUNK (at least one block). It bounds memory and never
            changes the result, since every block is quantised on its own.
    Returns:
        NF4Weight. Its bytes and absmax equal bitsandbytes' quantize_4bit(weight, blocksize, "nf4").
    Raises:
        ValueError: non-tensor, non-float, empty or non-finite weight; bad blocksize or chunk_size.
    """
    check_blocksize(blocksize)
    check_weight(weight)
    if chunk_size is None:
        chunk_size = max(1, DEFAULT_CHUNK // blocksize) * blocksize
    if check_int("chunk_size", chunk_size) % blocksize:
        raise ValueError(f"chunk_size={chunk_size!r}: must be a positive multiple of blocksize={blocksize}")
    n = weight.numel()
    full, tail = _split_blocks(weight.detach().reshape(-1), blocksize)  # (nf, bs), (t,), original dtype
    nf, step = full.shape[0], max(1, chunk_size // blocksize)
    absmax = torch.empty(nf + (tail.numel() > 0), dtype=torch.float32, device=weight.device)
    packed = torch.empty((n + 1) // 2, dtype=torch.uint8, device=weight.device)
    for start in range(0, nf, step):  # a loop over chunks of blocks, not elements
        stop = min(start + step, nf)
        chunk = full[start:stop].float()                       # (c, bs)
        absmax[start:stop] = chunk.abs().amax(dim=1)
        packed[start * blocksize // 2 : stop * blocksize // 2] = pack_nibbles(_codes_for_blocks(chunk, absmax[start:stop]))
    if tail.numel():
        tail = tail.float()
        absmax[nf] = tail.abs().amax()
        packed[nf * blocksize // 2:] = pack_nibbles(_codes_for_tail(tail, absmax[nf]))
    fields = dict(absmax=absmax, absmax_q=None, absmax_scale=None, absmax_mean=None)
    if double_quant:
        q, scale, mean = double_quantize(absmax, DQ_BLOCKSIZE)
        fields = dict(absmax=None, absmax_q=q, absmax_scale=scale, absmax_mean=mean)
    out = NF4Weight(packed=packed, shape=tuple(weight.shape), dtype=weight.dtype, blocksize=blocksize, **fields)
    check_scales(out)  # e.g. the mean of huge constants can overflow float32
    return out


def dequantized_absmax(q):
    """The per-block scales actually used to dequantise: (nb,) float32 (rebuilt if double-quantised)."""
    if not q.double_quant:
        return q.absmax
    return double_dequantize(q.absmax_q, q.absmax_scale, q.absmax_mean, q.dq_blocksize)


def dequantize_nf4(q, dtype=None, check_values=True):
    """ŵ = level[code] · absmax, reshaped to the original shape (QLoRA §3).

    Args:
        q: an NF4Weight from quantize_nf4.
        dtype: output dtype; the original dtype when None. The product is formed in float32 and then cast.
        check_values: also refuse NaN/inf or negative scales (see check_nf4_weight).
    Raises:
        ValueError: the stored tensors do not fit the recorded shape and blocksize, or a scale is
            not finite.
    """
    check_nf4_weight(q, values=check_values)
    n = q.numel
    # one table lookup per byte yields both of its levels. The (256, 2) float32 table is read as 256
    # int64 pairs, so each lookup copies one 8-byte element: several times faster on a CPU than
    # F.embedding's 2-wide rows. (ceil(n/2),) -> (ceil(n/2),) int64 -> (2·ceil(n/2),) float32
    pairs = _table("byte_levels", q.packed.device).view(torch.int64).reshape(-1)  # (256,)
    levels = pairs.index_select(0, q.packed.int()).view(torch.float32)[:n]  # a fresh tensor we may scale in place
    full, tail = _split_blocks(levels, q.blocksize)            # (nf, bs), (t,)
    absmax = dequantized_absmax(q)
    full.mul_(absmax[: full.shape[0], None])
    tail.mul_(absmax[full.shape[0]:])                          # the partial block's one scale (none if t = 0)
    return levels.reshape(q.shape).to(q.dtype if dtype is None else dtype)


def nbytes(q):
    """Bytes of every stored tensor of `q` (shape, dtype and blocksize are metadata, not counted)."""
    return sum(t.numel() * t.element_size() for t in q.tensors().values())


def bits_per_parameter(q):
    """8 · nbytes(q) / numel: 4 + 32/64 = 4.5 plain, 4 + 8/64 + 32/(64·256) + 32/n ≈ 4.127 double-quantised.

    Read from the stored tensors. The mean of the constants is one float32 for the whole tensor, so it
    adds 32/n bits (1.9e-6 for a 4096 × 4096 matrix); padding bytes count too for odd sizes.
    """
    return 8 * nbytes(q) / q.numel
