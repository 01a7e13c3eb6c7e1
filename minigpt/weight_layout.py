"""How GPT keeps its weights in memory: the one performance choice model.py makes, kept out of its way.

Note: Weight layout
    The blocks' four projections (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj) and the token
    embedding are stored transposed: nn.Linear's (d_out, d_in) values and shape, held in memory as the
    (d_in, d_out) matrix, strides (1, d_out). For the projections that is GPT-2's own Conv1D layout;
    for the embedding it serves the tied output head, the largest product (768 x 50257 in GPT-2 small).

    Why: generation at batch 1 multiplies one vector by every weight per token, x·Wᵀ, reading all of W
    from memory each time, and on the CPU this product is faster when W is stored as Wᵀ, in the order
    x·Wᵀ reads it. Measured: GPT-2-small-shaped greedy decoding, batch 1, one thread, went from 31 to
    38 tokens/s; a full fine-tuning step of GPT-2 small takes about 10% longer (the embedding's
    gradient), the tiny model's step as long as before (docs/results.md, tests/fixtures/layout_speed.py).

    Nothing else sees it: names, shapes, values and state dicts are nn.Linear's and nn.Embedding's;
    gradients arrive in the same layout (a matmul's backward follows its input's strides), and in-place
    updates (init, optimizer steps, loading's copy_, merges) keep it.
"""

import torch.nn as nn


def transposed_storage(module):
    """Store module.weight transposed: the same (n, m) values and shape, held in memory as the (m, n)
    matrix (strides (1, n)). Returns the module. See Note: Weight layout."""
    w = module.weight
    module.weight = nn.Parameter(w.detach().t().contiguous().t(), requires_grad=w.requires_grad)  # strides (1, n)
    return module


def store_gpt_weights_transposed(gpt):
    """Apply transposed_storage to a GPT's block projections and token embedding (before tying and init)."""
    for block in gpt.transformer.h:
        for linear in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
            transposed_storage(linear)
    transposed_storage(gpt.transformer.wte)
