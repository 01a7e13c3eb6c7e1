"""Exercise: what a LoRA adapter costs in parameters (Hu et al., 2021, §4.1 and §4.2).

A rank-r adapter on a d_in -> d_out linear layer trains A (r, d_in) and B (d_out, r): r·(d_in + d_out)
numbers beside the frozen d_out·d_in of W.

Grade with `pytest tests/test_exercises.py --impl=mine -k params` (see docs/exercises.md).
"""


def lora_param_count(d_in, d_out, r):
    """Trainable parameters of one rank-r adapter on a d_in -> d_out layer: r·(d_in + d_out). Returns an int."""
    raise NotImplementedError


def lora_model_param_count(layer_shapes, r):
    """Trainable parameters of rank-r adapters on every layer of `layer_shapes`.

    Args:
        layer_shapes: an iterable of (d_in, d_out) pairs, one per adapted linear layer.
        r: the rank, the same for every layer.
    Returns:
        Σ r·(d_in + d_out) over the layers, an int.
    """
    raise NotImplementedError
