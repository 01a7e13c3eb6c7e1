"""Bug in nf4_codebook: 16 quantiles of N(0, 1) spaced symmetrically around 0.5, the "obvious" NF4 table;
it has no level at exactly 0 (QLoRA §3 builds the two halves separately for that)."""

import torch

OFFSET = 0.9677083


def nf4_codebook():
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    levels = normal.icdf(torch.linspace(1 - OFFSET, OFFSET, 16, dtype=torch.float64))  # (16,), symmetric
    return (levels / levels.max()).float()
