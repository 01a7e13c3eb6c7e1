"""`python -m minigpt.budget`: parameters, FLOPs, bytes and step time of full fine-tuning, LoRA and QLoRA.

    python -m minigpt.budget --base gpt2 --method lora --rank 8 --targets c_attn --batch 4 --block-size 512
    python -m minigpt.budget --base llama-7b --targets q,v --dtype bfloat16 --batch 1 --no-measure
    python -m minigpt.budget --layers 96 --width 12288 --method lora --rank 4 --targets q,v --no-measure
    python -m minigpt.budget --papers          # the LoRA and QLoRA papers' settings beside their figures
"""

import argparse
import sys
from dataclasses import replace

import torch

from minigpt.budget.costs import METHODS
from minigpt.budget.machine import model_matmul_rate
from minigpt.budget.memory import DTYPES
from minigpt.budget.report import BudgetConfig, budget_rows, format_table, paper_comparison, shape_of
from minigpt.cli import one_line_errors

MEASURE_CAP = 2048  # the timed matmul's sizes are capped so it takes a second even for a 175B shape


def build_parser():
    p = argparse.ArgumentParser(prog="python -m minigpt.budget", description=__doc__.split("\n")[0].split(": ", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[2:]))
    p.add_argument("--base", default=None, metavar="NAME",
                   help="a GPT preset (tiny, test, gpt2, gpt2-medium, ...) or llama-7b, llama-65b, gpt3-175b "
                        "(default: gpt2, unless --layers and --width are given)")
    shape = p.add_argument_group("a shape of your own (or overriding --base's sizes)")
    for flag, help in (("layers", "transformer blocks"), ("width", "residual width C"), ("heads", "attention heads"),
                       ("vocab", "vocabulary size (default 50257)"),
                       ("positions", "rows of a learned position table; 0 for rotary (default: the base's, else --block-size)"),
                       ("mlp-width", "MLP width F (default: --mlp-ratio x width)")):
        shape.add_argument("--" + flag, type=int, default=None, metavar="N", help=help)
    shape.add_argument("--mlp-ratio", type=float, default=4.0, metavar="X", help="F / C (default: 4, GPT-2)")
    shape.add_argument("--gated", action="store_true", help="a SwiGLU MLP of three matrices, as LLaMA's")
    shape.add_argument("--no-bias", dest="bias", action="store_false", help="no biases, norms with gains only")
    shape.add_argument("--untied", dest="tied", action="store_false", help="an output head of its own")
    p.add_argument("--method", default="all", metavar="NAME", help=f"{', '.join(METHODS)} or all (default: all)")
    p.add_argument("--rank", type=int, default=8, metavar="N", help="LoRA rank r (default: 8)")
    p.add_argument("--targets", default="c_attn", metavar="LIST",
                   help="LoRA targets: module names (c_attn, c_proj, c_fc), all-linear, or q,v for the slices of "
                        "c_attn (default: c_attn)")
    p.add_argument("--batch", type=int, default=4, metavar="N", help="sequences per step (default: 4)")
    p.add_argument("--block-size", "--seq", dest="seq_len", type=int, default=512, metavar="N",
                   help="tokens per sequence (default: 512)")
    p.add_argument("--dtype", default="float32", metavar="NAME", help=f"{', '.join(DTYPES)} (default: float32)")
    p.add_argument("--state-dtype", default="float32", metavar="NAME", help="AdamW's moments (default: float32)")
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing: keep block inputs only")
    p.add_argument("--no-double-quant", dest="double_quant", action="store_false",
                   help="QLoRA without double quantisation (4.5 bits per weight instead of 4.127)")
    p.add_argument("--plain-lora", dest="folded", action="store_false",
                   help="count LoRA's side path B(Ax) as the paper writes it, not as lora.backward runs it "
                        "(B A folded into W0 where that is cheaper)")
    p.add_argument("--no-measure", dest="measure", action="store_false",
                   help="skip the timed matmul (no seconds per step)")
    p.add_argument("--papers", action="store_true", help="print the papers' settings beside their figures and stop")
    return p


def config_from(a):
    """The BudgetConfig of parsed arguments `a` (every value checked there)."""
    if a.method not in (*METHODS, "all"):
        raise ValueError(f"--method={a.method!r}: choose one of {[*METHODS, 'all']}")
    base = a.base if a.base is not None or (a.layers and a.width) else "gpt2"
    return BudgetConfig(base=base, layers=a.layers, width=a.width, heads=a.heads, vocab=a.vocab, positions=a.positions,
                        mlp_width=a.mlp_width, mlp_ratio=a.mlp_ratio, gated=a.gated, bias=a.bias, tied=a.tied,
                        methods=METHODS if a.method == "all" else (a.method,), rank=a.rank, targets=a.targets,
                        batch=a.batch, seq_len=a.seq_len, dtype=a.dtype, state_dtype=a.state_dtype,
                        checkpointing=a.checkpointing, double_quant=a.double_quant, folded=a.folded)


def papers_table():
    lines = ["| setting | predicted | paper | predicted / paper |", "|:---|---:|---:|---:|"]
    for r in paper_comparison():
        value = f"{r['predicted']:,}" if r["key"] == "trainable" else f"{r['predicted'] / 1e9:,.1f} GB"
        lines.append(f"| {r['what']} | {value} | {r['paper']} | {r['ratio']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    args = build_parser().parse_args(argv)
    with one_line_errors():
        if args.papers:
            print(papers_table())
            return 0
        cfg = config_from(args)
        shape = shape_of(cfg)
        rows = budget_rows(cfg)  # every check before the timed matmul
        rate = None
        if args.measure:
            capped = dict(batch=1, seq_len=min(MEASURE_CAP, cfg.batch * cfg.seq_len))
            small = replace(shape, n_embd=min(shape.n_embd, MEASURE_CAP), n_head=1,
                            mlp_width=min(shape.mlp_width, MEASURE_CAP))
            rate = model_matmul_rate(small, dtype=torch.float32, **capped)
            rows = budget_rows(cfg, rate)
    print(f"{shape.name}: L={shape.n_layer}, C={shape.n_embd}, heads={shape.n_head}, MLP {shape.mlp_width}"
          f"{' gated' if shape.gated else ''}, V={shape.vocab_size}; batch {cfg.batch} x {cfg.seq_len} tokens, "
          f"{cfg.dtype}{', checkpointing' if cfg.checkpointing else ''}")
    print(format_table(rows))
    if rate is not None:
        print(f"seconds / step: training FLOPs over {rate / 1e9:,.1f} GFLOP/s, a float32 matmul timed here on the CPU "
              "(matmuls only: norms, activations and the optimizer add to it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
