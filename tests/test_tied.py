"""Tied weights (lora/tied.py): finding GPT-2's shared lm_head / wte matrix and untying it."""

import torch
import torch.nn as nn

from helpers import tiny_gpt
from lora.tied import tied_weight_groups, tied_with, untie_weight


def test_finds_gpt_head_tied_to_token_embedding():
    model = tiny_gpt()
    assert tied_weight_groups(model) == [["lm_head", "transformer.wte"]]
    assert tied_with(model, "lm_head") == ["transformer.wte"]
    assert tied_with(model, "transformer.h.0.attn.c_attn") == []


def test_untied_copy_no_longer_shares_an_in_place_change():
    model = tiny_gpt()
    idx = torch.randint(0, 64, (2, 8))
    before = model(idx)[0].detach()
    assert untie_weight(model, "lm_head") == ["transformer.wte"]
    assert tied_weight_groups(model) == []
    torch.testing.assert_close(model(idx)[0], before, rtol=0, atol=0)  # same values after the copy
    emb_before = model.transformer.wte.weight.detach().clone()
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)  # what a merge into the head does
    assert torch.equal(model.transformer.wte.weight, emb_before)


def test_a_merge_into_a_tied_head_changes_the_embedding_too():
    """Why the check exists: an in-place change to the head's weight reaches the embedding lookup."""
    model = tiny_gpt()
    emb_before = model.transformer.wte.weight.detach().clone()
    with torch.no_grad():
        model.lm_head.weight.add_(0.5)
    assert not torch.equal(model.transformer.wte.weight, emb_before)


def test_views_of_one_storage_count_as_tied():
    shared = torch.randn(4, 3)
    a, b = nn.Linear(3, 4, bias=False), nn.Linear(3, 4, bias=False)
    a.weight, b.weight = nn.Parameter(shared), nn.Parameter(shared.view(4, 3))
    model = nn.Sequential(a, b, nn.Linear(3, 3))
    assert tied_weight_groups(model) == [["0", "1"]]


def test_parameters_over_one_storage_at_different_offsets_count_as_tied():
    # the rule is "the same storage", not "the same first element": views that start elsewhere in the
    # buffer (the second half, or an overlapping window) are tied to it too
    buffer = torch.randn(8, 3)
    a, b, c = (nn.Linear(3, 4, bias=False) for _ in range(3))
    a.weight = nn.Parameter(buffer[:4])
    b.weight = nn.Parameter(buffer[4:])                       # offset 12 elements
    c.weight = nn.Parameter(buffer.view(-1)[5:17].view(4, 3))  # offset 5, overlapping both
    assert b.weight.data_ptr() != a.weight.data_ptr() != c.weight.data_ptr()  # the offsets really differ
    model = nn.Sequential(a, b, c, nn.Linear(3, 3))
    assert tied_weight_groups(model) == [["0", "1", "2"]]
    assert tied_with(model, "1") == ["0", "2"]
