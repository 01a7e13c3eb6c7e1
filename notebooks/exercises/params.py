"""Exercise: what a LoRA adapter costs in parameters (Hu et al., 2021, §4.1 and §4.2).

A rank-r adapter on a linear layer with d_in inputs and d_out outputs trains its two factors A and B
(shapes below); the layer's own d_out·d_in weights stay frozen. Count what the adapters train.

Copy this file to notebooks/exercises/mine/ and grade it (docs/exercises.md):

    mkdir -p notebooks/exercises/mine && cp notebooks/exercises/params.py notebooks/exercises/mine/
    pytest tests/test_exercises.py --impl=mine -k params

Shape legend:
    A (r, d_in)   B (d_out, r)
"""


def lora_param_count(d_in, d_out, r):
    """Trainable parameters of one rank-r adapter on a d_in -> d_out linear layer. Returns an int."""
    raise NotImplementedError


def lora_model_param_count(layer_shapes, r):
    """Trainable parameters of rank-r adapters on every layer of `layer_shapes`.

    Args:
        layer_shapes: an iterable of (d_in, d_out) pairs, one per adapted linear layer.
        r: the rank, the same for every layer.
    Returns:
        an int.
    """
    raise NotImplementedError
