"""LoRA's backward pass, written out: the three gradients of a LoRA layer and the autograd.Function
that trains with them (Hu et al., 2021, §4.1).

    h = x W0ᵀ + b + s (x Aᵀ) Bᵀ        W0, b frozen;  s = α / r;  g = ∂L/∂h

Write u = x Aᵀ (the r numbers per position the adapter squeezes x into) and v = g B (the same for
the gradient coming back). The chain rule, summed over every position:

    ∂L/∂x = g W0 + s v A          (the frozen path, plus the adapter's)
    ∂L/∂B = s gᵀ u
    ∂L/∂A = s vᵀ x
    ∂L/∂W0: none

The saving is in the last line. Full fine-tuning computes ∂L/∂W0 = gᵀ x, a product as large as the
forward's x W0ᵀ (N·d_in·d_out multiply-adds for N positions), and keeps a d_out × d_in gradient and
two AdamW moments for it. LoRA skips that product. What it adds (u and u Bᵀ in the forward, v, v A
and the two small gradients in the backward) is 3·N·r·(d_in + d_out) multiply-adds: a quarter of
gᵀ x on the tiny model's c_attn (r = 8, 128 → 384), 4% of it on GPT-2's (768 → 2304).

Why by hand, when autograd would differentiate the same graph: these products are skinny (r = 8
columns against 2048 rows), and on a CPU their speed depends on the orientation of the product far
more than on its FLOPs. autograd computes v = g B as it is written, (N, d_out) @ (d_out, r), which
runs at a tenth of the rate of Bᵀ gᵀ, (r, d_out) @ (d_out, N): the same numbers, produced
transposed. Measured on the tiny model's shapes (N = 2048, d = 128 → 384, one thread): 0.93 ms
against 0.22 ms, and 1.7 ms against 0.21 ms for gᵀ u against (uᵀ g)ᵀ. With those orientations, a
fused add (addmm) and u kept from the forward, a LoRA training step of the fine-tune job becomes
faster than full fine-tuning's instead of slower (notebook 04 §4; `python -m minigpt.bench --sections 1`).

Dropout on the adapter's input (LoRA §4.1 leaves it out; loralib and PEFT apply it to x before A)
enters as a second input, x_lora = dropout(x): the base sees x, the adapter x_lora, and autograd
carries ∂L/∂x_lora = s v A back through the dropout mask. DoRA and an NF4 base keep their own
paths (lora.dora, lora.quant.nf4_linear): their weights are built in the forward, and autograd
differentiates that.

Shape legend:
    N      positions (every leading dimension of x flattened: batch × time)
    x (..., d_in)   W0 (d_out, d_in)   b (d_out,) or None   A (r, d_in)   B (d_out, r)   g (..., d_out)
    u (N, r) = x Aᵀ     v (N, r) = g B     s  the scaling, a float
"""

import torch


def _rows(t):
    """(..., d) -> (N, d): every leading position one row (a view when t is contiguous)."""
    return t.reshape(-1, t.shape[-1])


def adapter_input(x, A):
    """u = x Aᵀ: (N, d_in) -> (N, r), the adapter's r numbers per position (LoRA §4.1).

    Computed as (A xᵀ)ᵀ, the fast orientation for small r (module docstring); the result is a
    transposed (N, r) view of an (r, N) matrix, which is the layout ∂L/∂B = s (uᵀ g)ᵀ reads.
    """
    return (A @ x.T).T  # (r, d_in) @ (d_in, N) -> (r, N), viewed as (N, r)


def adapter_grad(grad_out, B):
    """v = g B: (N, d_out) -> (N, r), the gradient at u, divided by s.

    Computed as (Bᵀ gᵀ)ᵀ: the same numbers as g @ B, several times faster on a CPU for small r
    (see the module docstring); the result is a transposed (N, r) view of an (r, N) matrix.
    """
    return (B.T @ grad_out.T).T  # (r, d_out) @ (d_out, N) -> (r, N), viewed as (N, r)


def grad_x(grad_out, W, A, B, scaling, v=None):
    """∂L/∂x = g W0 + s (g B) A: (..., d_out) -> (..., d_in). No (d_out, d_in) matrix is built but W0.

    The first term is the frozen layer's own input gradient; the second passes g through the adapter,
    down to r numbers (g B) and back up to d_in (· A). `v` is g B when the caller has it already.
    """
    g = _rows(grad_out)
    v = adapter_grad(g, B) if v is None else v
    gx = g @ W                                              # (N, d_out) @ (d_out, d_in) -> (N, d_in)
    gx.addmm_(v, A, alpha=scaling)                          # += s (N, r) @ (r, d_in), in one pass
    return gx.reshape(*grad_out.shape[:-1], W.shape[1])


def grad_A(x, grad_out, B, scaling, v=None):
    """∂L/∂A = s (g B)ᵀ x, (r, d_in), summed over every position. `v` is g B when the caller has it."""
    v = adapter_grad(_rows(grad_out), B) if v is None else v
    return (v.T @ _rows(x)).mul_(scaling)                   # (r, N) @ (N, d_in) -> (r, d_in)


def grad_B(x, grad_out, A, scaling, u=None):
    """∂L/∂B = s gᵀ (x Aᵀ), (d_out, r), summed over every position. `u` is x Aᵀ when the caller has it.

    Computed as s (uᵀ g)ᵀ, the fast orientation (module docstring), and returned contiguous like B.
    """
    u = adapter_input(_rows(x), A) if u is None else u
    return (u.T @ _rows(grad_out)).mul_(scaling).T.contiguous()  # (r, N) @ (N, d_out) -> (r, d_out) -> (d_out, r)


def folded_weight(W, A, B, scaling):
    """W0 + s B A, (d_out, d_in), in W0's memory layout: the layer's effective weight (LoRA §4.1's merge,
    computed per call and never stored). It costs d_out·d_in·r multiply-adds whatever the number of
    positions. Keeping W0's strides (minigpt.weight_layout stores it transposed) means x Wᵀ runs the
    same kernel as the frozen layer's own product, so with B = 0 the output is the base's, bit for bit.
    """
    if W.T.is_contiguous():  # stored as the (d_in, d_out) matrix: build the sum in that layout
        return torch.addmm(W.T, A.T, B.T, alpha=scaling).T  # (d_in, d_out) + (d_in, r) @ (r, d_out)
    return torch.addmm(W, B, A, alpha=scaling)               # (d_out, d_in) + (d_out, r) @ (r, d_in)


def folding_pays(n, d_other):
    """True when folding B A into W0 costs fewer multiply-adds than the low-rank product it replaces.

    Forward: x (W0 + s B A)ᵀ instead of x W0ᵀ + s u Bᵀ trades N·r·d_out for d_out·d_in·r, so it pays
    when N > d_in (`d_other` = d_in). Backward: g (W0 + s B A) instead of g W0 + s v A trades
    N·r·d_in for the same d_out·d_in·r, so it pays when N > d_out. The fine-tune job (N = 2048
    positions, d ≤ 512) folds both; decoding one token (N = 1) never does.
    """
    return n > d_other


class LoRAFunction(torch.autograd.Function):
    """h = x W0ᵀ + b + s (x_lora Aᵀ) Bᵀ with the backward of the module docstring; W0 and b get no gradient.

    forward(ctx, x, W, b, A, B, scaling, x_lora=None): x_lora is the adapter's input, dropout(x), or
    None for x itself (no dropout). Returns (..., d_out).
    """

    @staticmethod
    def forward(ctx, x, W, b, A, B, scaling, x_lora=None):
        if W.requires_grad or (b is not None and b.requires_grad):
            raise ValueError("LoRAFunction trains A and B only: the base weight and bias must be frozen "
                             "(requires_grad=False)")
        xl = x if x_lora is None else x_lora
        x2 = _rows(x)
        fold = x_lora is None and folding_pays(x2.shape[0], W.shape[1])
        # u = x_lora Aᵀ: r numbers per position, kept for ∂L/∂B (cheaper than recomputing it there)
        u = adapter_input(_rows(xl), A) if ctx.needs_input_grad[4] or not fold else None  # (N, d_in) -> (N, r)
        if fold:                                                            # one product: x (W0 + s B A)ᵀ
            Wf = folded_weight(W, A, B, scaling)
            out = x2 @ Wf.T if b is None else torch.addmm(b, x2, Wf.T)      # (N, d_in) -> (N, d_out)
        else:                                                               # x W0ᵀ + b, then += s u Bᵀ
            out = x2 @ W.T if b is None else torch.addmm(b, x2, W.T)        # (N, d_in) -> (N, d_out)
            out.addmm_(u, B.T, alpha=scaling)                               # (N, r) @ (r, d_out)
        ctx.save_for_backward(xl, W, A, B, u)
        ctx.scaling, ctx.separate_input = scaling, x_lora is not None
        return out.reshape(*x.shape[:-1], W.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        xl, W, A, B, u = ctx.saved_tensors
        s, need = ctx.scaling, ctx.needs_input_grad
        g = _rows(grad_out)
        fold = need[0] and not ctx.separate_input and folding_pays(g.shape[0], W.shape[0])
        v = adapter_grad(g, B) if need[3] or need[6] or (need[0] and not fold) else None  # (N, d_out) -> (N, r)
        gx = gxl = None
        if ctx.separate_input:  # the base's input and the adapter's (dropped) input get their own gradient
            gx = (g @ W).reshape(*grad_out.shape[:-1], W.shape[1]) if need[0] else None
            gxl = (v @ A).mul_(s).reshape(xl.shape) if need[6] else None
        elif fold:                                                  # one product: g (W0 + s B A)
            gx = (g @ folded_weight(W, A, B, s)).reshape(*grad_out.shape[:-1], W.shape[1])
        elif need[0]:
            gx = grad_x(grad_out, W, A, B, s, v=v)
        gA = grad_A(xl, g, B, s, v=v) if need[3] else None
        gB = grad_B(xl, g, A, s, u=u) if need[4] else None
        return gx, None, None, gA, gB, None, gxl  # one per forward input: x, W, b, A, B, scaling, x_lora


def lora_linear(x, W, b, A, B, scaling, x_lora=None):
    """h = x W0ᵀ + b + s (x_lora Aᵀ) Bᵀ through LoRAFunction: (..., d_in) -> (..., d_out)."""
    return LoRAFunction.apply(x, W, b, A, B, scaling, x_lora)
