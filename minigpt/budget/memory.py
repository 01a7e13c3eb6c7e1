"""Bytes a training step holds: weights, gradients, AdamW's state and the activations saved for backward.

    weights      every parameter in its dtype; QLoRA's block linear weights in NF4 instead:
                 4 + 32/64 = 4.5 bits per weight, or with double quantisation 4 + 8/64 + 32/(64·256)
                 ≈ 4.127 bits (QLoRA §3), the exact bytes lora.quant.report.nf4_storage_bytes gives
    gradients    one per trainable parameter, in its dtype (frozen weights hold no .grad)
    AdamW state  exp_avg and exp_avg_sq per trainable parameter (torch keeps them in the parameter's
                 dtype), and a float32 `step` per trainable tensor
    activations  what autograd saves in the forward pass for the backward pass (see activation_bytes)

Shape legend: B batch, T sequence length, C n_embd, F MLP width, nh heads, V vocab, r rank, L n_layer.
"""

import torch

from lora.checks import check_bool, check_int
from lora.quant.report import nf4_storage_bytes
from minigpt.budget.costs import base_parameters, lora_layers, parameter_counts

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
NF4_BLOCKSIZE = 64
STATS_BYTES = 4  # LayerNorm's mean and 1/std, and attention's logsumexp, are float32 under any dtype


def itemsize(dtype):
    """Bytes per element of a DTYPES name."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {list(DTYPES)}")
    return DTYPES[dtype].itemsize


def nf4_bits_per_weight(double_quant=True, blocksize=NF4_BLOCKSIZE, dq_blocksize=256):
    """4 + 32/blocksize bits per weight (one float32 absmax per block); with double quantisation
    4 + 8/blocksize + 32/(blocksize·dq_blocksize) (int8 absmax, a float32 scale per 256 of them) (QLoRA §3)."""
    return 4 + (8 / blocksize + 32 / (blocksize * dq_blocksize) if double_quant else 32 / blocksize)


def weight_bytes(shape, plan, dtype="float32", double_quant=True):
    """Bytes of every parameter: all of them in `dtype`, except QLoRA's NF4 linear weights."""
    counts, size = parameter_counts(shape, plan), itemsize(dtype)
    if plan.method != "qlora":
        return counts["total"] * size
    nf4 = shape.n_layer * sum(nf4_storage_bytes(d_in * d_out, NF4_BLOCKSIZE, double_quant)
                              for _, d_in, d_out in shape.block_linears())
    return nf4 + (counts["total"] - counts["quantized"]) * size


def gradient_bytes(shape, plan, dtype="float32"):
    """Bytes of .grad: one element per trainable parameter."""
    return parameter_counts(shape, plan)["trainable"] * itemsize(dtype)


def optimizer_bytes(shape, plan, dtype="float32"):
    """AdamW's state: 2 moments per trainable parameter in `dtype`, plus a 4-byte step per trainable tensor."""
    counts = parameter_counts(shape, plan)
    return 2 * counts["trainable"] * itemsize(dtype) + 4 * counts["trainable_tensors"]


def _trains(plan, name, adapted):
    return plan.method == "full" or name in adapted


def block_saved_elements(shape, plan, first=False):
    """{what: elements per token} one block saves for backward (those in STATS_BYTES marked "(fp32)").

    The input of a linear layer is saved only when its weight trains or a LoRA adapter reads it (a
    frozen weight needs no x for its gradient); q, k, v, the attention output (which is also
    attn.c_proj's input) and the MLP's pre-activation are saved always; the first block under LoRA
    saves nothing before its first adapter, since its input (the frozen embeddings) needs no gradient.
    """
    C, F = shape.n_embd, shape.mlp_width
    adapted = {name for name, _, _ in lora_layers(shape, plan)}
    qkv_lora = adapted & {"attn.q", "attn.k", "attn.v"}
    grad_in = not first or plan.method == "full"
    saved = {"ln_1 input": C * grad_in, "ln_1 stats (fp32)": 2 * grad_in,
             "c_attn input": C * (_trains(plan, "attn.c_attn", adapted) or bool(qkv_lora)),
             "q, k, v": 3 * C, "attention output": C, "logsumexp (fp32)": shape.n_head,
             "ln_2 input": C, "ln_2 stats (fp32)": 2,
             "c_fc input": C * (_trains(plan, "mlp.c_fc", adapted) or _trains(plan, "mlp.c_gate", adapted)),
             "MLP pre-activation": F}
    if shape.gated:  # silu(gate) * up saves gate's input to silu, silu's output and up's output
        saved["MLP gate and up"] = 2 * F
    saved["mlp.c_proj input"] = F * _trains(plan, "mlp.c_proj", adapted)
    saved["LoRA A·x"] = plan.rank * len(adapted) if plan.method != "full" else 0
    return saved


def head_saved_bytes(shape, plan, dtype="float32"):
    """Bytes per token the final norm, the head and the loss save: ln_f's input and stats, the head's
    input when it trains, float32 log-probabilities, the int64 targets (and ids when wte trains)."""
    size, full = itemsize(dtype), plan.method == "full"
    return (shape.n_embd * size * (1 + full) + 2 * STATS_BYTES + 4 * shape.vocab_size + 8 * (1 + full))


def _bytes(saved, size):
    return sum(n * (STATS_BYTES if "(fp32)" in what else size) for what, n in saved.items())


def activation_bytes(shape, plan, batch, seq_len, dtype="float32", checkpointing=False):
    """Peak bytes of tensors saved for backward in one step, B·T tokens (Korthikanti et al., 2022, §4.1
    count 34·C bytes per token and layer in 16 bits with dropout masks and no fused attention; ours,
    without dropout and with a fused attention kernel that keeps no T x T matrix, about 16·C elements).

    With gradient checkpointing each block keeps only its input (C per token) and recomputes the rest
    in the backward pass, one block at a time: L·C plus one block's activations plus the head's.
    """
    check_int("batch", batch)
    check_int("seq_len", seq_len)
    check_bool("checkpointing", checkpointing)
    size, tokens, L = itemsize(dtype), batch * seq_len, shape.n_layer
    first, rest = (_bytes(block_saved_elements(shape, plan, first=f), size) for f in (True, False))
    head = head_saved_bytes(shape, plan, dtype)
    if checkpointing:
        return tokens * (L * shape.n_embd * size + rest + head)
    return tokens * (first + (L - 1) * rest + head)


def training_bytes(shape, plan, batch, seq_len, dtype="float32", state_dtype="float32", checkpointing=False,
                   double_quant=True):
    """{"weights", "gradients", "optimizer", "activations", "total"}: the bytes of one training step."""
    out = {"weights": weight_bytes(shape, plan, dtype, double_quant), "gradients": gradient_bytes(shape, plan, dtype),
           "optimizer": optimizer_bytes(shape, plan, state_dtype),
           "activations": activation_bytes(shape, plan, batch, seq_len, dtype, checkpointing)}
    return {**out, "total": sum(out.values())}


def frozen_share(shape):
    """Fraction of the parameters QLoRA stores in NF4 (the blocks' linear weights)."""
    base = base_parameters(shape)
    return base["quantizable"] / (base["embeddings"] + base["blocks"] + base["head"])
