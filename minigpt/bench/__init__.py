"""`python -m minigpt.bench`: one harness, one module per section.

    runner.py      BenchConfig, the section table, run(): markdown tables and a JSON file
    harness.py     timers, memory readings, byte counts, thread pinning, subprocess isolation
    train_step.py  1: a training step, full vs LoRA vs QLoRA
    inference.py   2: inference, base vs LoRA unmerged vs merged; 3: one LoRALinear vs nn.Linear
    nf4.py         4: NF4 quantise/dequantise throughput and error
    throughput.py  5: MiniGPT training throughput on nanoGPT's CPU configuration
    generation.py  6: generation tokens/s, KV cache vs re-running the context
    busy.py        7: the tiny training step idle vs beside one busy process
"""

from minigpt.bench.runner import SECTIONS, BenchConfig, busy_warning, run

__all__ = ["SECTIONS", "BenchConfig", "busy_warning", "run"]
