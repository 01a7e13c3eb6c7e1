"""Parameters and FLOPs of one training step: full fine-tuning, LoRA and QLoRA, from the shapes alone.

Counts are PEFT's (lora.count_parameters): every tensor once (a tied head is the embedding), a
quantized weight by its logical size. A LoRA layer d_in -> d_out trains r·(d_in + d_out) numbers
(LoRA §4.1). QLoRA quantises every linear layer of the blocks (QLoRA §3) and trains the same adapters.

FLOPs count a multiply-add as 2 (Kaplan et al., 2020, §2.1; Chinchilla's appendix F), per token:

    linear d_in -> d_out   forward 2·d_in·d_out; backward 4·d_in·d_out when its weight trains (the
                           input's gradient and the weight's), 2·d_in·d_out when it is frozen (only the
                           input's: LoRA's saving, LoRA §4.2)
    attention scores       forward 2·T·C for q kᵀ and 2·T·C for the weighted sum of v, per block (every
                           position against all T, nanoGPT's transformer_sizing convention; a causal
                           kernel may skip the masked half); backward twice that (no weights)
    LoRA side path         forward 2·r·(d_in + d_out); backward twice that (A's, B's and x's gradients)

so full fine-tuning costs 3x its forward pass (6N per token for N weights, the familiar rule) and LoRA
about 2x plus the small side paths. Layer norms, GELU, softmax and the optimizer are not counted: they
move bytes more than they multiply (minigpt.budget.machine times them as part of a real step).

Shape legend: L n_layer, C n_embd, V vocab, T sequence length, r rank, N parameters.
"""

from dataclasses import dataclass

from lora.backward import folding_pays
from lora.checks import check_choice, check_int
from minigpt.budget.shapes import adapted_layers

METHODS = ("full", "lora", "qlora")


@dataclass(frozen=True)
class TrainPlan:
    method: str = "lora"      # full | lora | qlora
    rank: int = 8             # LoRA r (lora, qlora)
    targets: str = "c_attn"   # LoRA targets in our spelling; "q,v" for the slices of c_attn

    def __post_init__(self):
        check_choice("method", self.method, METHODS)
        check_int("rank", self.rank)


def lora_layers(shape, plan):
    """[(name, d_in, d_out)] per block that `plan` adapts ([] for full fine-tuning), rank checked.

    Raises:
        ValueError: a bad target (minigpt.budget.shapes.adapted_layers), or rank above min(d_in, d_out).
    """
    if plan.method == "full":
        return []
    layers = adapted_layers(shape, plan.targets)
    for name, d_in, d_out in layers:
        if plan.rank > min(d_in, d_out):
            raise ValueError(f"rank={plan.rank} exceeds min(d_in, d_out) = {min(d_in, d_out)} of {name!r}")
    return layers


def lora_parameters(rank, d_in, d_out):
    """r·(d_in + d_out): A is (r, d_in), B is (d_out, r) (LoRA §4.1)."""
    return rank * (d_in + d_out)


def base_parameters(shape):
    """{"embeddings", "blocks", "head", "quantizable"}: parameters of the model by part; head is 0 when
    tied; quantizable = the blocks' linear weights (what QLoRA stores in NF4)."""
    C, b = shape.n_embd, int(shape.bias)
    linears = shape.block_linears()
    weights = sum(d_in * d_out for _, d_in, d_out in linears)
    per_block = weights + b * sum(d_out for _, _, d_out in linears) + 2 * C * (1 + b)  # + biases, two norms
    return {"embeddings": (shape.vocab_size + shape.block_size) * C,
            "blocks": shape.n_layer * per_block + C * (1 + b),  # + the final norm
            "head": 0 if shape.tied else shape.vocab_size * C,
            "quantizable": shape.n_layer * weights}


def base_tensors(shape):
    """Number of parameter tensors of the base model (AdamW keeps a `step` tensor for each trained one)."""
    per_layer = (len(shape.block_linears()) + 2) * (1 + int(shape.bias))  # weight (+ bias) each; two norms
    return 1 + int(shape.block_size > 0) + shape.n_layer * per_layer + 1 + int(shape.bias) + int(not shape.tied)


def parameter_counts(shape, plan):
    """{"total", "trainable", "adapter", "quantized", "trainable_tensors"} as lora.count_parameters counts
    them: total includes the adapter; quantized is the NF4-stored part (QLoRA), else 0."""
    base = base_parameters(shape)
    total = base["embeddings"] + base["blocks"] + base["head"]
    layers = lora_layers(shape, plan)
    adapter = shape.n_layer * sum(lora_parameters(plan.rank, d_in, d_out) for _, d_in, d_out in layers)
    full = plan.method == "full"
    return {"total": total + adapter, "trainable": total if full else adapter, "adapter": adapter,
            "quantized": base["quantizable"] if plan.method == "qlora" else 0,
            "trainable_tensors": base_tensors(shape) if full else 2 * shape.n_layer * len(layers)}


def linear_flops(d_in, d_out, trained):
    """(forward, backward) FLOPs per token of a linear layer: 2·d_in·d_out, then 4·d_in·d_out if its
    weight trains else 2·d_in·d_out (the weight's gradient x ᵀ·dy is skipped; LoRA §4.2)."""
    forward = 2 * d_in * d_out
    return forward, 2 * forward if trained else forward


def lora_side_flops(rank, d_in, d_out, tokens=None, needs_dx=True):
    """(forward, backward) FLOPs per token of the side path B·(A·x): 2·r·(d_in + d_out), then twice that
    (v = g·B, A's and B's gradients, and x's through A).

    tokens: the N positions of one call when the layer runs lora.backward.LoRAFunction (our LoRALinear
    on a CPU in float32), which folds B·A into W0 where that is cheaper (lora.backward.folding_pays):
    the fold costs 2·d_out·d_in·r per call, i.e. 2·d_out·d_in·r / N per token, in place of u·Bᵀ in the
    forward (when N > d_in) and of v·A in the backward (when N > d_out). None: the plain side path.
    needs_dx: False where the layer's input needs no gradient (the first adapted layer under LoRA).
    """
    fold = 2 * rank * d_in * d_out / tokens if tokens else 0
    forward = 2 * rank * d_in + (fold if tokens and folding_pays(tokens, d_in) else 2 * rank * d_out)
    backward = 2 * rank * d_out + 2 * rank * d_in + 2 * rank * d_out  # v = g B, A's and B's gradients
    if needs_dx:
        backward += fold if tokens and folding_pays(tokens, d_out) else 2 * rank * d_in  # x's, through A
    return forward, backward


def attention_flops(seq_len, n_embd):
    """(forward, backward) FLOPs per token of one block's q kᵀ and (softmax) v: 4·T·C, then 8·T·C."""
    forward = 4 * seq_len * n_embd
    return forward, 2 * forward


BLOCK_ORDER = ("attn.c_attn", "attention", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # c_gate sits beside c_fc


def _depth(name):
    if name in ("attn.q", "attn.k", "attn.v"):
        return 0
    return BLOCK_ORDER.index("mlp.c_fc" if name == "mlp.c_gate" else name)


def first_block_savings(shape, plan, seq_len, tokens=None):
    """{"matmul_weights", "attention", "lora"}: backward FLOPs per token LoRA skips in the first block.

    Under LoRA the embeddings are frozen, so nothing before the first adapter needs a gradient:
    autograd runs no backward for the products before it, and none for the input of the adapted
    layer itself (its base's x-gradient and the adapter's), only for A's and B's weights.
    """
    layers = lora_layers(shape, plan)
    first = min(_depth(name) for name, _, _ in layers)
    saved = {"matmul_weights": 0, "attention": 0, "lora": 0}
    for name, d_in, d_out in shape.block_linears():
        if _depth(name) <= first:
            saved["matmul_weights"] += linear_flops(d_in, d_out, trained=False)[1]
    if first > BLOCK_ORDER.index("attention"):
        saved["attention"] += attention_flops(seq_len, shape.n_embd)[1]
    for name, d_in, d_out in layers:
        if _depth(name) == first:
            saved["lora"] += (lora_side_flops(plan.rank, d_in, d_out, tokens)[1]
                              - lora_side_flops(plan.rank, d_in, d_out, tokens, needs_dx=False)[1])
    return saved


def flops_per_token(shape, plan, seq_len, tokens=None):
    """{"forward", "backward", "train", "matmul_weights", "attention", "lora"}: FLOPs per token of a
    training step at sequence length `seq_len`; "train" = forward + backward, the others are the forward
    and backward FLOPs of each kind of product. tokens: B·T positions per step when LoRA's layers run
    lora.backward.LoRAFunction (see lora_side_flops; QLoRA's NF4 layers never do), None for the plain
    side path of the paper."""
    check_int("seq_len", seq_len)
    fused = tokens if plan.method == "lora" else None
    trained = plan.method == "full"
    parts = {"matmul_weights": [0, 0], "attention": [0, 0], "lora": [0, 0]}

    def add(kind, fwd_bwd, times=1):
        parts[kind][0] += times * fwd_bwd[0]
        parts[kind][1] += times * fwd_bwd[1]

    L = shape.n_layer
    for _, d_in, d_out in shape.block_linears():
        add("matmul_weights", linear_flops(d_in, d_out, trained), L)
    add("matmul_weights", linear_flops(shape.n_embd, shape.vocab_size, trained))  # the head
    add("attention", attention_flops(seq_len, shape.n_embd), L)
    for _, d_in, d_out in lora_layers(shape, plan):
        add("lora", lora_side_flops(plan.rank, d_in, d_out, fused), L)
    if plan.method != "full":
        for kind, skipped in first_block_savings(shape, plan, seq_len, fused).items():
            parts[kind][1] -= skipped
    forward, backward = (sum(p[i] for p in parts.values()) for i in (0, 1))
    return {"forward": forward, "backward": backward, "train": forward + backward,
            **{kind: sum(p) for kind, p in parts.items()}}
