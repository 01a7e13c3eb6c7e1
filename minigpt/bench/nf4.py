"""Benchmark section 4: NF4 quantisation speed and reconstruction error (QLoRA §3).

Throughput is reported as GB/s of float32 moved: bytes of float32 input for quantise, bytes of float32
output for dequantise, so it compares directly with memory bandwidth. The weights are Gaussian with
GPT-2's init std 0.02, the distribution NF4's levels are built for. Every figure is read from the
quantised tensors, with and without double quantisation of the absmax constants.

Shape legend: d_out x d_in, the layout of nn.Linear.weight.
"""

import torch

from lora import dequantize_nf4, nbytes, quantize_nf4
from minigpt.bench.harness import make_section, make_target, ms, spread_ms, time_fn

STD = 0.02  # GPT-2's weight init std


def gpt2_linear_shapes(n_layer=12, n_embd=768):
    """The (d_out, d_in) of every linear weight in GPT-2 small: c_attn, attn.c_proj, c_fc, mlp.c_proj per block."""
    C = n_embd
    return [(3 * C, C), (C, C), (4 * C, C), (C, 4 * C)] * n_layer


def _nf4_cases(quick):
    """(label, list of shapes, repeats divisor) for section 4."""
    if quick:
        return [("one (256 x 64)", [(256, 64)], 1), ("test set", gpt2_linear_shapes(2, 16), 1)]
    return [("c_fc (3072 x 768)", [(3072, 768)], 1),
            ("all 48 GPT-2 small linears", gpt2_linear_shapes(), 10)]


def nf4_measure(weights, double_quant, warmup, repeats):
    """Quantise/dequantise timings, stored bytes and reconstruction RMSE for a list of weights."""
    def quantize_all():
        return [quantize_nf4(w, double_quant=double_quant) for w in weights]

    qs = quantize_all()

    def dequantize_all():
        for q in qs:  # each result is dropped before the next, as a QLoRA forward pass drops them
            dequantize_nf4(q)

    tq = time_fn(quantize_all, warmup, repeats)
    td = time_fn(dequantize_all, warmup, repeats)
    n = sum(w.numel() for w in weights)
    sq_err = sum(float(((dequantize_nf4(q) - w).double() ** 2).sum()) for q, w in zip(qs, weights, strict=True))
    stored = sum(nbytes(q) for q in qs)  # read from the stored tensors
    return dict(params=n, double_quant=double_quant, quantize=tq, dequantize=td,
                quantize_gb_s=4 * n / tq["median"] / 1e9, dequantize_gb_s=4 * n / td["median"] / 1e9,
                stored_bytes=stored, bits_per_param=8 * stored / n, rmse=(sq_err / n) ** 0.5)


def run_nf4(cfg):
    """Section 4: NF4 quantise/dequantise throughput and RMSE, with and without double quantisation."""
    rows, results, targets = [], [], []
    g = torch.Generator().manual_seed(cfg.seed)
    for label, shapes, divisor in _nf4_cases(cfg.quick):
        weights = [torch.randn(shape, generator=g) * STD for shape in shapes]
        by_dq = {}
        for double_quant in (False, True):
            r = nf4_measure(weights, double_quant, cfg.warmup, max(3, cfg.repeats // divisor))
            by_dq[double_quant] = r = dict(r, weights=label)
            results.append(r)
            rows.append([label, f"{r['params']:,}", "yes" if double_quant else "no",
                         ms(r["quantize"]["median"]), spread_ms(r["quantize"]), f"{r['quantize_gb_s']:.3g}",
                         ms(r["dequantize"]["median"]), spread_ms(r["dequantize"]), f"{r['dequantize_gb_s']:.3g}",
                         f"{r['bits_per_param']:.3f}", f"{r['rmse']:.3e}", f"{r['rmse'] / STD:.4f}"])
        change = by_dq[True]["rmse"] / by_dq[False]["rmse"] - 1
        targets.append(make_target(f"{label}: RMSE change from double quantisation", change, "|change| < 1%",
                                   abs(change) < 0.01, digits=5))
    headers = ["weights", "params", "double quant", "quantise ms", "IQR ms", "quantise GB/s", "dequantise ms",
               "IQR ms", "dequantise GB/s", "bits/param", "RMSE", "RMSE / std"]
    notes = [f"Gaussian weights with std {STD}, blocksize 64; GB/s counts float32 bytes in (quantise) or out "
             "(dequantise); bits/param counts every stored tensor (packed codes and scales)."]
    return make_section("NF4 quantisation: throughput and reconstruction error", [dict(headers=headers, rows=rows)],
                        targets, notes, results)
