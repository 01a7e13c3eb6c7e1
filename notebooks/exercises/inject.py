"""Exercise: put LoRA into any model: replace its named linear layers and freeze everything else (LoRA §4.2).

LoRA adapts a pretrained network without editing its code: chosen linear layers (the paper adapts the
attention projections, §4.2 and §7.1) are swapped for layers that hold the frozen original plus a
trainable low-rank update, and every other parameter is frozen, so only the adapters train.

You write the swap, for any nn.Module. Which LoRA layer goes in is not your concern here: a factory
`make_layer(linear) -> nn.Module` builds it around the linear layer it replaces, so the library's
layer (functools.partial(lora.LoRALinear, rank=8, alpha=16)) or one you wrote can be plugged in.

Copy this file to notebooks/exercises/mine/ and grade it (docs/exercises.md):

    mkdir -p notebooks/exercises/mine && cp notebooks/exercises/inject.py notebooks/exercises/mine/
    pytest tests/test_exercises.py --impl=mine -k inject

Names are those of model.named_modules(): "transformer.h.0.attn.c_attn", or "0" and "2" in an
nn.Sequential. A target t names every module whose name is t or ends with "." + t (PEFT's rule for
target_modules), so "c_attn" names the c_attn of every block.
"""

import torch.nn as nn  # noqa: F401  (you will need it)


def inject_lora(model, targets, make_layer):
    """Replace every nn.Linear of `model` named by `targets` by make_layer(that linear), in place.

    Afterwards a parameter of the model is trainable exactly when it belongs to one of the new layers
    and not to the linear layer it wraps: the adapters train, everything else (the wrapped weights,
    embeddings, norms, untouched layers) is frozen.

    Args:
        model: any nn.Module.
        targets: a module name or a list of them (see the module docstring).
        make_layer: called once per replaced layer with that nn.Linear; returns the module to put in its place.
    Returns:
        {name: the nn.Linear that was replaced}, in the order of model.named_modules().
    Raises:
        ValueError: no targets, or a target that names no nn.Linear of the model (say which, and list the
            linear layers there are). Then nothing is changed: check every target before the first swap.
    """
    raise NotImplementedError
