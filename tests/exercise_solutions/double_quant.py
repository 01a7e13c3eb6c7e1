"""Worked solution of notebooks/exercises/double_quant.py: NF4's bits per weight and double quantisation (QLoRA §3)."""

import torch
import torch.nn.functional as F


def bits_per_parameter(blocksize=64, dq_blocksize=None):
    if dq_blocksize is None:
        return 4 + 32 / blocksize                              # a float32 absmax per block
    return 4 + 8 / blocksize + 32 / (blocksize * dq_blocksize)  # an int8 absmax, a float32 scale per dq block


def _blocks(c, blocksize):
    return F.pad(c, (0, (-c.numel()) % blocksize)).view(-1, blocksize)  # (nb,) -> (nq, blocksize)


def double_quantize(absmax, blocksize=256):
    mean = absmax.float().mean().reshape(1)                     # (1,)
    blocks = _blocks(absmax.float() - mean, blocksize)          # (nq, blocksize), centred
    scale = blocks.abs().amax(dim=1)                            # (nq,)
    q = torch.round(127 * blocks / torch.where(scale > 0, scale, 1.0)[:, None]).to(torch.int8)
    return q.reshape(-1)[: absmax.numel()], scale, mean


def double_dequantize(q, scale, mean, blocksize=256):
    blocks = _blocks(q.float(), blocksize)
    return (blocks * scale.float()[:, None] / 127 + mean.float()).reshape(-1)[: q.numel()]
