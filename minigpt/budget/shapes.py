"""A model reduced to the shapes its compute and memory depend on, and the layers a LoRA target names.

A ModelShape is a GPT-2-style decoder (our GPT, built from a minigpt.model preset) or a LLaMA-like one
(untied head, no biases, no position table, a gated MLP of any width), given by its sizes alone, so a
175-billion-parameter model is described without allocating anything. Its linear layers per block are
named as in our GPT:

    attn.c_attn   C -> 3C   q, k, v fused (GPT-2's layout)     attn.c_proj  C -> C
    mlp.c_fc      C -> F    (F = MLP width, 4C in GPT-2)        mlp.c_proj   F -> C
    mlp.c_gate    C -> F    only in a gated (SwiGLU) MLP, as LLaMA's gate_proj

Targets follow PEFT's suffix rule (lora.targets.name_matches): "c_proj" is both attn.c_proj and
mlp.c_proj; "all-linear" is every linear layer of the blocks (not the head). The LoRA paper adapts
W_q and W_v as separate C -> C matrices (LoRA §7.1), which our fused c_attn does not have; the
targets "q", "k", "v" stand for those slices of c_attn, each adapted on its own (r·(C + C) each),
as loralib's MergedLinear does.

Shape legend: L n_layer, C n_embd, nh n_head, F MLP width, V vocab_size, P block_size (positions).
"""

from dataclasses import dataclass, replace

from lora.checks import check_bool, check_int, check_str
from lora.targets import ALL_LINEAR, name_matches, user_targets
from minigpt.model import PRESETS, GPTConfig

QKV = ("q", "k", "v")  # slices of attn.c_attn, C -> C each


@dataclass(frozen=True)
class ModelShape:
    name: str             # what tables call it
    n_layer: int          # transformer blocks L
    n_embd: int           # residual width C
    n_head: int           # attention heads nh
    vocab_size: int       # V
    block_size: int       # rows of the learned position table P; 0 for rotary positions (LLaMA)
    mlp_width: int        # F: 4C in GPT-2, 11008 in LLaMA-7B
    gated: bool = False   # SwiGLU MLP (three matrices, LLaMA) instead of GELU (two, GPT-2)
    bias: bool = True     # biases in every linear layer and LayerNorm (GPT-2); False: gains only
    tied: bool = True     # the output head is the token embedding's matrix (GPT-2); False: its own (LLaMA)

    def __post_init__(self):
        check_str("name", self.name)
        for field in ("n_layer", "n_embd", "n_head", "vocab_size", "mlp_width"):
            check_int(field, getattr(self, field))
        check_int("block_size", self.block_size, least=0)
        if self.n_embd % self.n_head:
            raise ValueError(f"width={self.n_embd} is not divisible by heads={self.n_head}")
        for field in ("gated", "bias", "tied"):
            check_bool(field, getattr(self, field))

    def block_linears(self):
        """[(name, d_in, d_out)] of one block's linear layers, in model order."""
        C, F = self.n_embd, self.mlp_width
        mlp = [("mlp.c_fc", C, F)] + ([("mlp.c_gate", C, F)] if self.gated else []) + [("mlp.c_proj", F, C)]
        return [("attn.c_attn", C, 3 * C), ("attn.c_proj", C, C)] + mlp


def from_gpt_config(config, name="gpt"):
    """The ModelShape of GPT(config) (minigpt.model): GELU MLP of 4C, tied head, learned positions."""
    return ModelShape(name=name, n_layer=config.n_layer, n_embd=config.n_embd, n_head=config.n_head,
                      vocab_size=config.vocab_size, block_size=config.block_size, mlp_width=4 * config.n_embd,
                      bias=config.bias)


# Shapes the papers fine-tune, for the rows docs/budget.md compares with their figures.
PAPER_SHAPES = {
    # LLaMA-7B (Touvron et al., 2023, Table 2), the architecture of Llama-2-7B: 6,738,415,616 parameters
    "llama-7b": ModelShape("llama-7b", 32, 4096, 32, 32000, 0, 11008, gated=True, bias=False, tied=False),
    # LLaMA-65B, the model QLoRA fine-tunes on one 48 GB GPU (QLoRA §1)
    "llama-65b": ModelShape("llama-65b", 80, 8192, 64, 32000, 0, 22016, gated=True, bias=False, tied=False),
    # GPT-3 175B (Brown et al., 2020, Table 2.1): 96 layers, width 12288, 96 heads, context 2048
    "gpt3-175b": ModelShape("gpt3-175b", 96, 12288, 96, 50257, 2048, 4 * 12288),
}


def named_shape(name, **overrides):
    """A minigpt.model preset (tiny, test, gpt2, ...) or a PAPER_SHAPES entry, with fields overridden."""
    if name in PRESETS:
        return replace(from_gpt_config(GPTConfig.from_preset(name), name), **overrides)
    if name in PAPER_SHAPES:
        return replace(PAPER_SHAPES[name], **overrides)
    raise ValueError(f"base={name!r}: choose a preset {sorted(PRESETS)} or a paper shape {sorted(PAPER_SHAPES)}, "
                     "or give --layers and --width for a shape of your own")


def adapted_layers(shape, targets):
    """[(name, d_in, d_out)] per block of the layers LoRA `targets` adapts (our spelling: "c_attn, c_fc",
    "all-linear", or "q,v" for the slices of c_attn), in block order.

    Raises:
        ValueError: a target matching no linear layer of the block, a regular expression, or q/k/v
            combined with c_attn (they would adapt the same weights twice).
    """
    if isinstance(targets, str) and targets.startswith("re:"):
        raise ValueError(f"targets={targets!r}: the budget takes module names or 'all-linear', not a regex")
    normal = user_targets(targets)
    linears = shape.block_linears()
    if normal == ALL_LINEAR:
        return linears
    C, chosen = shape.n_embd, []
    slices = [t for t in normal if t in QKV]
    for target in normal:
        if target in QKV:
            continue
        hits = [layer for layer in linears if name_matches(layer[0], target)]
        if not hits:
            raise ValueError(f"target {target!r} matches no linear layer; a block has {[n for n, _, _ in linears]}, "
                             f"and {list(QKV)} name the slices of attn.c_attn")
        chosen += [layer for layer in hits if layer not in chosen]
    if slices and any(name == "attn.c_attn" for name, _, _ in chosen):
        raise ValueError(f"targets={targets!r}: {slices} are slices of c_attn; adapt c_attn or its slices, not both")
    return [(f"attn.{s}", C, C) for s in QKV if s in slices] + [layer for layer in linears if layer in chosen]
