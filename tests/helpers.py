"""Helpers shared by several test modules (plain functions; fixtures live in conftest.py)."""

import copy

import torch


def snapshot(model):
    """Everything a failed call must leave as it was: tensors, module types, trainable flags, config."""
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: type(m) for n, m in model.named_modules()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        copy.deepcopy(getattr(model, "lora_config", None)),
    )


def assert_unchanged(model, before):
    """The model equals the snapshot `before`, tensor for tensor and flag for flag."""
    state, types, flags, config = snapshot(model)
    assert types == before[1] and flags == before[2] and config == before[3]
    assert state.keys() == before[0].keys()
    assert all(torch.equal(state[k], before[0][k]) for k in state)
