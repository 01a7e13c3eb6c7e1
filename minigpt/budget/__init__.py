"""minigpt.budget: what full fine-tuning, LoRA and QLoRA cost in parameters, FLOPs, bytes and seconds.

    shapes    ModelShape: a model as its sizes (our presets, LLaMA and GPT-3 shapes, your own)
    costs     parameter counts (PEFT's) and FLOPs per token, forward and backward
    memory    bytes of weights (NF4 for QLoRA), gradients, AdamW state and saved activations
    machine   a timed matmul's FLOP/s, a step's predicted seconds, saved-tensor bytes measured
    report    BudgetConfig -> one row per method; the papers' settings (PAPER_ROWS)

`python -m minigpt.budget --help` prints the command's options.
"""

from minigpt.budget.costs import TrainPlan, flops_per_token, parameter_counts
from minigpt.budget.machine import matmul_rate, saved_tensor_bytes, step_seconds
from minigpt.budget.memory import activation_bytes, gradient_bytes, optimizer_bytes, training_bytes, weight_bytes
from minigpt.budget.report import BudgetConfig, budget_rows, format_table, paper_comparison
from minigpt.budget.shapes import ModelShape, from_gpt_config, named_shape

__all__ = ["TrainPlan", "flops_per_token", "parameter_counts", "matmul_rate", "saved_tensor_bytes", "step_seconds",
           "activation_bytes", "gradient_bytes", "optimizer_bytes", "training_bytes", "weight_bytes", "BudgetConfig",
           "budget_rows", "format_table", "paper_comparison", "ModelShape", "from_gpt_config", "named_shape"]
