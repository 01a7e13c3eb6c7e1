"""Validation loss on fixed batches: the number every training curve, report and notebook compares.

Shape legend: B batch_size, T block_size.
"""

import torch

from minigpt.data import get_batch
from minigpt.device import autocast


@torch.no_grad()
def estimate_loss(model, data, cfg):
    """Mean loss over cfg.eval_batches batches of cfg.batch_size windows of `data`.

    The batches come from a fresh generator seeded with cfg.seed, so every evaluation sees the same
    windows and evaluations compare. The model runs in eval mode, then gets its previous mode back.
    `cfg` is a TrainConfig or anything with batch_size, block_size, eval_batches and seed.
    """
    raw = getattr(model, "_orig_mod", model)  # a compiled model keeps the module here
    block = cfg.block_size or raw.config.block_size
    device = next(raw.parameters()).device
    generator = torch.Generator().manual_seed(cfg.seed)
    was_training = model.training
    model.eval()
    try:
        total = 0.0
        for _ in range(cfg.eval_batches):
            x, y = get_batch(data, cfg.batch_size, block, generator=generator, device=device,
                             vocab_size=raw.config.vocab_size)
            with autocast(device):
                total += model(x, y)[1].item()
    finally:
        model.train(was_training)
    return total / cfg.eval_batches
