"""Where QLoRA's memory savings come from, in numbers: the figures of docs/nf4.md.

    python -m lora.quant.report      # prints the memory table and the error figures

Memory: every linear weight of the transformer blocks is stored in NF4 (blocksize 64), everything
else (embeddings, norms, biases, an untied output head) in bf16, as QLoRA does. Stored bytes come from
`nf4_storage_bytes`, which tests check against the tensors quantize_nf4 actually stores.

Errors: Gaussian weights (the distribution NF4 is built for), NF4 against symmetric absmax int4 with
the same blocksize, with and without double quantisation, and the three 8-bit schemes for the scales.
"""

import argparse
import dataclasses
import math

import torch

from lora.quant.double_quant import DQ_BLOCKSIZE, double_quant_scheme_errors, num_dq_blocks, roundtrip_constants
from lora.quant.fp4_int4 import int4_roundtrip
from lora.quant.nf4 import dequantize_nf4, quantize_nf4

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model reduced to what its memory depends on."""

    name: str
    linear: tuple  # ((d_out, d_in, count), ...) the linear weights NF4 replaces
    other: int     # every other parameter, kept in bf16


def gpt2_small_spec(n_layer=12, n_embd=768, vocab_size=50257, block_size=1024):
    """GPT-2 small, 124,439,808 parameters; lm_head is tied to wte, so it is not a separate weight."""
    C = n_embd
    per_block = ((3 * C, C), (C, C), (4 * C, C), (C, 4 * C))  # c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj
    biases_norms = 3 * C + C + 4 * C + C + 2 * 2 * C          # the four biases, ln_1 and ln_2
    other = vocab_size * C + block_size * C + n_layer * biases_norms + 2 * C  # wte, wpe, blocks, ln_f
    return ModelSpec("GPT-2 small", tuple((o, i, n_layer) for o, i in per_block), other)


def llama2_7b_spec(n_layer=32, dim=4096, hidden=11008, vocab_size=32000):
    """Llama-2-7B, 6,738,415,616 parameters: q, k, v, o, gate, up, down per layer, untied output head."""
    per_layer = ((dim, dim),) * 4 + ((hidden, dim), (hidden, dim), (dim, hidden))
    other = 2 * vocab_size * dim + n_layer * 2 * dim + dim  # embedding, output head, RMSNorms
    return ModelSpec("Llama-2-7B", tuple((o, i, n_layer) for o, i in per_layer), other)


def nf4_storage_bytes(numel, blocksize=64, double_quant=False):
    """Bytes quantize_nf4 stores for `numel` weights: ceil(n/2) code bytes plus the scales.

    Plain: one float32 absmax per block. Double-quantised: one int8 per block, one float32 scale per
    256 blocks and one float32 mean.
    """
    nb = math.ceil(numel / blocksize)
    scales = nb + 4 * num_dq_blocks(nb, DQ_BLOCKSIZE) + 4 if double_quant else 4 * nb
    return (numel + 1) // 2 + scales


def memory_row(spec, blocksize=64):
    """{"model", "params", "quantized_params", "fp32", "bf16", "nf4", "nf4_dq"}: bytes of the whole model."""
    quantized = sum(o * i * n for o, i, n in spec.linear)
    params = quantized + spec.other
    row = dict(model=spec.name, params=params, quantized_params=quantized, fp32=4 * params, bf16=2 * params)
    for key, dq in (("nf4", False), ("nf4_dq", True)):
        row[key] = sum(n * nf4_storage_bytes(o * i, blocksize, dq) for o, i, n in spec.linear) + 2 * spec.other
    return row


def format_memory_table(rows):
    """A markdown table of memory_row dicts, in GiB (2^30 bytes)."""
    lines = ["| model | parameters | in NF4 layers | fp32 | bf16 | NF4 | NF4 + double quant |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        share = r["quantized_params"] / r["params"]
        gib = [f"{r[k] / GIB:.3f} GiB" for k in ("fp32", "bf16", "nf4", "nf4_dq")]
        lines.append(f"| {r['model']} | {r['params']:,} | {share:.1%} | " + " | ".join(gib) + " |")
    return "\n".join(lines)


def int4_absmax_roundtrip(weight, blocksize=64):
    """The baseline NF4 beats: ŵ = round(7·w/absmax)/7 · absmax, 15 evenly spaced levels per block.

    Symmetric, so -8 is unused: the grid has an exact zero and is the mirror of itself, like NF4's ends.
    The round trip itself is lora.quant.fp4_int4.int4_roundtrip, beside QLoRA's other baseline, FP4.
    """
    return int4_roundtrip(weight, blocksize)


def _rmse(a, b):
    return (a.double() - b.double()).pow(2).mean().sqrt().item()


def error_figures(numel=2**20, blocksize=64, seed=0):
    """Round-trip RMSE on N(0, 1) weights and the scale error of each double-quantisation scheme.

    Returns:
        {"nf4_rmse", "nf4_dq_rmse", "dq_rmse_change", "int4_rmse",
         "schemes": double_quant_scheme_errors plus "weight_rmse", the weights' RMSE with those scales}.
    """
    w = torch.randn(numel, generator=torch.Generator().manual_seed(seed))
    q = quantize_nf4(w, blocksize)
    nf4 = _rmse(dequantize_nf4(q), w)
    nf4_dq = _rmse(dequantize_nf4(quantize_nf4(w, blocksize, double_quant=True)), w)
    schemes = double_quant_scheme_errors(q.absmax)
    for scheme, figures in schemes.items():  # same codes, scales replaced by their 8-bit round trip
        q_scheme = dataclasses.replace(q, absmax=roundtrip_constants(q.absmax, scheme))
        figures["weight_rmse"] = _rmse(dequantize_nf4(q_scheme), w)
    return dict(nf4_rmse=nf4, nf4_dq_rmse=nf4_dq, dq_rmse_change=nf4_dq / nf4 - 1,
                int4_rmse=_rmse(int4_absmax_roundtrip(w, blocksize), w), schemes=schemes)


def build_parser():
    """The command line: no options; --help says what it prints, and an unknown flag exits 2."""
    return argparse.ArgumentParser(prog="python -m lora.quant.report", description=__doc__.split("\n")[0])


def main(argv=None):
    build_parser().parse_args(argv)
    print(format_memory_table([memory_row(gpt2_small_spec()), memory_row(llama2_7b_spec())]))
    f = error_figures()
    print(f"\nRound-trip RMSE on 2^20 N(0, 1) weights, blocks of 64 (seed 0): NF4 {f['nf4_rmse']:.5f}, "
          f"NF4 + double quant {f['nf4_dq_rmse']:.5f} ({f['dq_rmse_change']:+.3%}), int4 absmax {f['int4_rmse']:.5f}")
    print("\n| 8-bit scheme for the scales | scale RMSE / rms(absmax) | worst relative scale error | weight RMSE |\n"
          "|---|---:|---:|---:|")
    for scheme, e in f["schemes"].items():
        print(f"| {scheme} | {e['rel_rmse']:.3e} | {e['max_rel']:.3e} | {e['weight_rmse']:.5f} |")
    print(f"| none (float32 scales) | 0 | 0 | {f['nf4_rmse']:.5f} |")


if __name__ == "__main__":
    main()
