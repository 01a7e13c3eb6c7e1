"""LoRA dropout acts on the input of the low-rank path only, exactly as the formula says."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lora import apply_lora
from lora.layer import LoRALinear


def with_nonzero_B(layer):
    """B starts at zero, which would hide where dropout is applied: give it random values."""
    with torch.no_grad():
        layer.lora_B.normal_()
    return layer


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_dropout_is_applied_to_the_input_of_the_low_rank_path(p):
    """In training mode with a fixed seed: layer(x) == base(x) + (α/r)·(mask ⊙ x) Aᵀ Bᵀ, mask as F.dropout draws it."""
    torch.manual_seed(0)
    rank, alpha = 4, 12.0
    base = nn.Linear(16, 8, dtype=torch.float64)
    layer = with_nonzero_B(LoRALinear(base, rank, alpha, dropout=p)).train()
    x = torch.randn(5, 16, dtype=torch.float64)
    torch.manual_seed(123)
    out = layer(x)
    torch.manual_seed(123)
    dropped = F.dropout(x, p, training=True)  # the same draw: zeros where dropped, x / (1 - p) elsewhere
    assert (dropped == 0).any() and not torch.equal(dropped, x)  # the mask does something here
    s = alpha / rank  # LoRA §4.1
    expected = base(x) + s * (dropped @ layer.lora_A.T @ layer.lora_B.T)
    assert torch.allclose(out, expected, rtol=0, atol=1e-12)
    # and the base path saw the whole input: dropping on the output or on both paths gives other numbers
    torch.manual_seed(123)
    on_output = base(x) + F.dropout(s * (x @ layer.lora_A.T @ layer.lora_B.T), p, training=True)
    assert not torch.allclose(out, on_output)


def test_dropout_is_off_in_eval_mode_and_through_apply_lora():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16, dtype=torch.float64), nn.ReLU(), nn.Linear(16, 4, dtype=torch.float64))
    apply_lora(model, rank=2, alpha=4, dropout=0.5, targets=["0"])
    layer = with_nonzero_B(model[0]).eval()
    x = torch.randn(3, 16, dtype=torch.float64)
    expected = layer.base(x) + (4 / 2) * (x @ layer.lora_A.T @ layer.lora_B.T)
    assert torch.allclose(layer(x), expected, rtol=0, atol=1e-12)
