"""The budget of one fine-tuning setting, as rows: what full fine-tuning, LoRA and QLoRA each cost.

budget_rows(BudgetConfig(...)) returns one dict per method with its parameters, FLOPs and bytes (and
seconds per step when a matmul rate is given); format_table renders them as a markdown table with the
methods side by side. PAPER_ROWS are the settings the LoRA and QLoRA papers report, for the
comparison in docs/budget.md.
"""

from dataclasses import dataclass, replace

from lora.checks import check_bool, check_choice, check_float, check_int
from minigpt.budget.costs import METHODS, TrainPlan, flops_per_token, parameter_counts
from minigpt.budget.machine import step_seconds
from minigpt.budget.memory import DTYPES, training_bytes
from minigpt.budget.shapes import ModelShape, named_shape

GB = 1e9


@dataclass(frozen=True)
class BudgetConfig:
    base: str | None = "gpt2"    # a preset or paper shape (minigpt.budget.shapes.named_shape); None: the sizes below
    layers: int | None = None     # n_layer of a shape of your own (or overriding base's)
    width: int | None = None      # n_embd
    heads: int | None = None      # n_head (default: width // 64, or the base's)
    vocab: int | None = None      # vocab_size (default 50257, or the base's)
    positions: int | None = None  # rows of a learned position table (default: seq_len; 0: rotary)
    mlp_width: int | None = None  # MLP width F (default: mlp_ratio · width)
    mlp_ratio: float = 4.0        # F / C when mlp_width is not given
    gated: bool = False           # SwiGLU MLP (LLaMA) for a shape of your own
    bias: bool = True             # biases (GPT-2); False: gains only (LLaMA)
    tied: bool = True             # the head shares the embedding (GPT-2); False: its own matrix (LLaMA)
    methods: tuple = METHODS      # which of full, lora, qlora
    rank: int = 8                 # LoRA r
    targets: str = "c_attn"       # LoRA targets; "q,v" for W_q and W_v, the slices of c_attn
    batch: int = 4                # sequences per step B
    seq_len: int = 512            # tokens per sequence T
    dtype: str = "float32"        # weights, gradients and activations
    state_dtype: str = "float32"  # AdamW's moments
    checkpointing: bool = False   # gradient checkpointing (minigpt.model.GPT.set_gradient_checkpointing)
    double_quant: bool = True     # QLoRA's double quantisation of the NF4 constants
    folded: bool = True           # LoRA layers run as lora.backward does (B A folded into W0 where cheaper);
                                  # False: the paper's side path B·(A·x) as written

    def __post_init__(self):
        for name in ("layers", "width", "heads", "vocab", "mlp_width"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name))
        if self.positions is not None:
            check_int("positions", self.positions, least=0)
        check_float("mlp_ratio", self.mlp_ratio)
        for name in ("gated", "bias", "tied", "checkpointing", "double_quant", "folded"):
            check_bool(name, getattr(self, name))
        if not self.methods or any(m not in METHODS for m in self.methods):
            raise ValueError(f"methods={self.methods!r}: choose from {list(METHODS)}")
        for name in ("rank", "batch", "seq_len"):
            check_int(name, getattr(self, name))
        check_choice("dtype", self.dtype, list(DTYPES))
        check_choice("state_dtype", self.state_dtype, list(DTYPES))
        if self.base is None and (self.layers is None or self.width is None):
            raise ValueError("give a base (e.g. gpt2), or the layers and width of a shape of your own")


def shape_of(cfg):
    """The ModelShape `cfg` describes: its base with the given sizes overridden, or the sizes alone."""
    if cfg.base is not None:
        shape = named_shape(cfg.base)
        given = dict(n_layer=cfg.layers, n_embd=cfg.width, n_head=cfg.heads, vocab_size=cfg.vocab,
                     block_size=cfg.positions, mlp_width=cfg.mlp_width)
        shape = replace(shape, **{k: v for k, v in given.items() if v is not None})
        if cfg.width is not None and cfg.mlp_width is None:
            shape = replace(shape, mlp_width=round(cfg.mlp_ratio * cfg.width))
        return shape
    return ModelShape(name=f"L={cfg.layers}, C={cfg.width}", n_layer=cfg.layers, n_embd=cfg.width,
                      n_head=cfg.heads or max(1, cfg.width // 64), vocab_size=cfg.vocab or 50257,
                      block_size=cfg.seq_len if cfg.positions is None else cfg.positions,
                      mlp_width=cfg.mlp_width or round(cfg.mlp_ratio * cfg.width), gated=cfg.gated, bias=cfg.bias,
                      tied=cfg.tied)


def budget_rows(cfg, rate=None, efficiency=1.0):
    """[{row}] one per method of `cfg`: parameters, FLOPs per token and per step, bytes, and seconds per
    step at `rate` FLOP/s (None: not estimated); "flop_ratio" is the step's FLOPs over full fine-tuning's."""
    shape = shape_of(cfg)
    full_flops = flops_per_token(shape, TrainPlan("full"), cfg.seq_len)["train"]
    tokens, rows = cfg.batch * cfg.seq_len, []
    for method in cfg.methods:
        plan = TrainPlan(method, cfg.rank, cfg.targets)
        counts = parameter_counts(shape, plan)
        flops = flops_per_token(shape, plan, cfg.seq_len, tokens if cfg.folded else None)
        memory = training_bytes(shape, plan, cfg.batch, cfg.seq_len, cfg.dtype, cfg.state_dtype, cfg.checkpointing,
                                cfg.double_quant)
        step = flops["train"] * tokens
        rows.append(dict(model=shape.name, method=method, targets=None if method == "full" else cfg.targets,
                         rank=None if method == "full" else cfg.rank, **counts,
                         trainable_percent=100 * counts["trainable"] / counts["total"],
                         forward_flops_per_token=flops["forward"], backward_flops_per_token=flops["backward"],
                         train_flops_per_token=flops["train"], step_flops=step, flop_ratio=flops["train"] / full_flops,
                         **{f"{k}_bytes": v for k, v in memory.items()},
                         step_seconds=None if rate is None else step_seconds(step, rate, efficiency)))
    return rows


def _gb(n):
    return f"{n / GB:,.3f} GB" if n < 10 * GB else f"{n / GB:,.1f} GB"


def _flops(n):
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n:,.0f}"


LINES = (  # (label, row key, format)
    ("parameters", "total", "{:,}"), ("trainable parameters", "trainable", "{:,}"),
    ("trainable %", "trainable_percent", "{:.4f}"),
    ("forward FLOPs / token", "forward_flops_per_token", _flops),
    ("backward FLOPs / token", "backward_flops_per_token", _flops),
    ("training FLOPs / step", "step_flops", _flops), ("FLOPs / full's", "flop_ratio", "{:.3f}"),
    ("weights", "weights_bytes", _gb), ("gradients", "gradients_bytes", _gb),
    ("AdamW state", "optimizer_bytes", _gb), ("activations", "activations_bytes", _gb),
    ("total memory", "total_bytes", _gb), ("seconds / step", "step_seconds", "{:.3g}"),
)


def format_table(rows):
    """A markdown table: one line per quantity, one column per method."""
    def cell(fmt, value):
        if value is None:
            return "-"
        return fmt(value) if callable(fmt) else fmt.format(value)

    head = "| | " + " | ".join(r["method"] for r in rows) + " |"
    lines = [head, "|:---|" + "---:|" * len(rows)]
    lines += [f"| {label} | " + " | ".join(cell(fmt, r[key]) for r in rows) + " |" for label, key, fmt in LINES
              if any(r[key] is not None for r in rows)]
    return "\n".join(lines)


# The settings of the papers' claims: (what, BudgetConfig, the method whose row is compared, the key
# compared, the papers' figure in their words, that figure as a number for the ratio).
PAPER_ROWS = (
    ("GPT-3 175B, LoRA r=1 on W_q, W_v: trainable parameters (LoRA Table 4's 4.7M row)",
     BudgetConfig(base="gpt3-175b", methods=("lora",), rank=1, targets="q,v", batch=1, seq_len=2048, dtype="float16"),
     "trainable", "4.7M", 4.7e6),
    ("GPT-3 175B, LoRA r=4 on W_q, W_v: trainable parameters (LoRA §7.1 and Table 5: a budget of 18M)",
     BudgetConfig(base="gpt3-175b", methods=("lora",), rank=4, targets="q,v", batch=1, seq_len=2048, dtype="float16"),
     "trainable", "18M", 18e6),
    ("GPT-3 175B, LoRA r=4 on W_q, W_v: weights in 16 bits (LoRA §4.2: 350GB of VRAM in training)",
     BudgetConfig(base="gpt3-175b", methods=("lora",), rank=4, targets="q,v", batch=1, seq_len=2048, dtype="float16"),
     "weights_bytes", "350GB", 350e9),
    ("GPT-3 175B, full fine-tuning with Adam: weights, gradients, state (LoRA §4.2: 1.2TB)",
     BudgetConfig(base="gpt3-175b", methods=("full",), batch=1, seq_len=2048, dtype="float16"),
     "state_bytes", "1.2TB", 1.2e12),
    ("LLaMA-65B, full fine-tuning in 16 bits: weights, gradients, state (QLoRA abstract: >780GB)",
     BudgetConfig(base="llama-65b", methods=("full",), batch=1, seq_len=512, dtype="bfloat16"),
     "state_bytes", ">780GB", 780e9),
    ("LLaMA-65B, QLoRA r=64 on all linear layers, batch 1 x 512, checkpointing: all memory (QLoRA §1: one 48GB GPU)",
     BudgetConfig(base="llama-65b", methods=("qlora",), rank=64, targets="all-linear", batch=1, seq_len=512,
                  dtype="bfloat16", checkpointing=True),
     "total_bytes", "<48GB", 48e9),
    ("LLaMA-7B, LoRA r=8 on W_q, W_v, bf16 weights, batch 1 x 512: all memory (one 24GB GPU)",
     BudgetConfig(base="llama-7b", methods=("lora",), rank=8, targets="q,v", batch=1, seq_len=512, dtype="bfloat16"),
     "total_bytes", "<24GB", 24e9),
)


def paper_comparison():
    """[{"what", "predicted", "paper", "ratio"}] for PAPER_ROWS; "state_bytes" is weights + gradients + AdamW."""
    out = []
    for what, cfg, key, paper, number in PAPER_ROWS:
        (row,) = budget_rows(cfg)
        if key == "state_bytes":
            value = row["weights_bytes"] + row["gradients_bytes"] + row["optimizer_bytes"]
        else:
            value = row[key]
        out.append(dict(what=what, predicted=value, paper=paper, ratio=value / number, key=key))
    return out
